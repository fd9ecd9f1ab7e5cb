//! The `PERSON` detector: person names in free text, from a gazetteer, context cues and
//! token shape, with no model.
//!
//! Part of the redact step's detectors (`detect/`): a [`Trigger::Code`] detector
//! ([`find`]), last in [`BUILTINS`] so every structured type wins a tie.
//!
//! ## What counts as a name
//!
//! Text is read as *name words*: a capital letter then lowercase letters (`Müller`, `Łukasz`,
//! `José`), joined by `-` or `'` to more such parts (`Jean-Luc`, `O'Neil`, `D'Angelo`), with
//! the `Mc`/`Mac`/`De`/`Di`/`La`/`Le` prefixes (`McDonald`, `DeShawn`). Name words separated
//! by spaces, and by lowercase particles (`van der`, `de la`, `von`, `di`, `bin`), form a
//! *run*; honorifics, greetings and guard words (below) split a run into *segments*. A
//! segment of at most four name words is a name when one of these holds:
//!
//! 1. **A cue** ends right before it (up to 6 bytes of spaces, `,` `:` `=` quotes, newlines in
//!    between): "my name is", "I'm", "I am", "Dear", "Hi", "Hello", "Thanks", "Thank you",
//!    "Regards,", "Best,", "Cheers", "Sincerely", "account holder", "name:", "name=",
//!    "customer", the honorifics (Mr, Mrs, Ms, Dr, Prof, Herr, Frau, M., Mme, Mlle, Sr.,
//!    Sra., Don, Doña) and their German, French and Spanish equivalents ("ich heiße", "mein
//!    Name ist", "Sehr geehrte", "je m'appelle", "Bonjour", "me llamo", "Hola", "Gracias",
//!    "Saludos", "Mit freundlichen Grüßen", "Cordialement", ...). The segment need not be in
//!    the gazetteer ("Thanks Priya", "account holder Tomasz Nowak").
//! 2. **A given name then more name words**: its first word is a given name of the gazetteer
//!    and at least one name word follows ("Paul Hunt", "Hans-Jürgen Dörr").
//!    A given name that is also a common word (below) counts here only mid-sentence and
//!    when the last word is a surname of the gazetteer ("to Amber Taylor").
//! 3. **A vocative**: a lone given name after `, ` that follows a lowercase word, and before
//!    `!`, `?`, `.`, `,` or `;` ("Happy to help, Paul!").
//!
//! The gazetteer is `data/names/` (US Census 1990 given names and the 25,000 most frequent
//! surnames, Moby given names; public domain, see its README), compiled by `build.rs` into an
//! FST embedded in the binary. One lookup per name word, of at most [`MAX_WORD`] bytes.
//!
//! ## The precision guard
//!
//! Ordinary prose, technical text and code must not be shredded, so:
//! - **Guard words** are never part of a name: function words, greetings, honorifics,
//!   weekdays and months, common nouns of support and technical text (`Team`, `Support`,
//!   `Server`, `Street`), product and company names (`Apple`, `Google`, `Python`, `Windows`)
//!   ([`GUARD`]). A run like "The Smith" or "Apple Pay" has no segment a rule accepts.
//! - **Given names that are common words** (Will, May, June, Mark, Bill, Rose, Grant, Hope,
//!   Amber, Sunday, ...; [`AMBIGUOUS`]) count as given names only after a cue ("Thanks Will"),
//!   never for rule 3, and for rule 2 only mid-sentence before a surname ("Will Power",
//!   "May Day", "Will Smith" opening a sentence are not masked).
//! - **Words at a sentence start** get no special trust: a lone capitalized word is never a
//!   name without a cue or a vocative, and rule 2 needs the gazetteer's given name.
//! - **Headings and Title Case**: a segment of more than four name words ("Getting Started
//!   With The New Release") is a title, not a name, unless a cue precedes it (then its first
//!   four words are masked).
//! - **Code identifiers**: a word glued to `_`, `.`, `/`, `\`, `@`, `#`, `$`, `<`, `>`,
//!   `` ` `` or a digit, followed by `(` or `::`, or CamelCase (`HashMap`, `JsonValue`: an
//!   inner capital outside the name prefixes) or ALL CAPS is not a name word.
//!
//! Lowercase names ("my name is jane doe") are not detected: capitalization is the signal
//! that keeps prose readable.
//!
//! ## Cost
//!
//! One pass over the bytes finds the candidate starts (an ASCII capital or a non-ASCII lead
//! byte at a word start, [`Mode::Gated`]; every character, [`Mode::Exhaustive`]); each word
//! is read once (a run's words are consumed), looked up once, and a cue is looked for in the
//! 48 bytes before a segment. Linear in the text, charged one unit per byte and per word.

use std::collections::HashMap;

/// The fixed word lists as one map: lowercase word → the lists it is in (bits: [`GUARD_WORD`],
/// [`SOFT_WORD`], [`AMBIGUOUS_WORD`], [`PLACE`], [`COMPASS`]).
/// One map, so a word is lowercased and looked up once however many lists ask about it
/// (five sets cost ~4 lookups per capitalized word, ~7 % of the pipeline's CPU on English
/// prose, `benches/load` with perf). foldhash, not SipHash (SipHash was ~6 %). Built once
/// from the lists and never grown, so no input can flood it.
type WordKinds = HashMap<&'static str, u8, foldhash::fast::RandomState>;
use std::ops::Range;
use std::sync::LazyLock;

use fst::Map;

use super::{Exceeded, Meter, Mode, lower};

/// The gazetteer: lowercase name → flags ([`GIVEN`] | [`SURNAME`]), built by `build.rs`.
static NAMES_FST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/names.fst"));

static NAMES: LazyLock<Map<&'static [u8]>> =
    LazyLock::new(|| Map::new(NAMES_FST).expect("build.rs writes a valid FST"));

/// Gazetteer flag: a given name.
const GIVEN: u64 = 1;

/// Gazetteer flag: a surname.
const SURNAME: u64 = 2;

/// Longest name word looked up, in bytes; longer words are not names (and bound the lookup).
const MAX_WORD: usize = 40;

/// Most name words in one name.
const MAX_NAME_WORDS: usize = 4;

/// Bytes between a cue and the name it introduces.
const MAX_GAP: usize = 6;

/// Bytes before a segment searched for a cue (the longest cue is shorter).
const CUE_WINDOW: usize = 48;

/// Cues that introduce a name, lowercase (ASCII letters are compared case-insensitively).
/// Each must end the text before the name, after a word boundary, up to [`MAX_GAP`] bytes of
/// spaces, `,`, `:`, `=`, quotes or newlines away.
const CUES: &[&str] = &[
    // English.
    "my name is",
    "name is",
    "i'm",
    "i’m",
    "i am",
    "dear",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank you",
    "account holder",
    "cardholder",
    "card holder",
    "name",
    "full name",
    "customer",
    "customer is",
    "customer on file",
    "patient",
    "signed",
    "contact",
    "attn",
    "attention",
    "called",
    "named",
    "landlord",
    "landlady",
    "tenant",
    "owner",
    "recipient",
    "beneficiary",
    "payee",
    "colleague",
    "friend",
    "wife",
    "husband",
    "son",
    "daughter",
    "mother",
    "father",
    "brother",
    "sister",
    "mr",
    "mr.",
    "mrs",
    "mrs.",
    "ms",
    "ms.",
    "miss",
    "dr",
    "dr.",
    "prof",
    "prof.",
    "sir",
    // German.
    "ich heiße",
    "ich heisse",
    "mein name ist",
    "sehr geehrte",
    "sehr geehrter",
    "liebe",
    "lieber",
    "hallo",
    "danke",
    "herr",
    "frau",
    "kunde",
    "kundin",
    "kontoinhaber",
    "kontoinhaberin",
    // French.
    "je m'appelle",
    "je m’appelle",
    "je suis",
    "bonjour",
    "merci",
    "m.",
    "mme",
    "mme.",
    "mlle",
    "mlle.",
    "madame",
    "monsieur",
    "cher",
    "chère",
    "titulaire",
    // Spanish.
    "me llamo",
    "mi nombre es",
    "soy",
    "hola",
    "gracias",
    "sr.",
    "sr",
    "sra.",
    "sra",
    "srta.",
    "don",
    "doña",
    "estimado",
    "estimada",
    "señor",
    "señora",
    "titular",
];

/// Sign-offs: cues only when a `,` or a line break follows them ("Best,\nAnna"; not "best
/// Practices").
const SIGNOFFS: &[&str] = &[
    "regards",
    "best",
    "cheers",
    "sincerely",
    "yours",
    "grüße",
    "grüßen",
    "gruß",
    "cordialement",
    "saludos",
    "atentamente",
    "thanks",
    "thank you",
];

/// Words that are never part of a name (lowercase): greetings and honorifics (cues written
/// as their own words), function words of the four languages, weekdays and months, common
/// nouns of support and technical text, product and company names. The precision guard.
const GUARD: &[&str] = &[
    // Greetings, honorifics, sign-offs.
    "dear",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "regards",
    "best",
    "cheers",
    "sincerely",
    "mr",
    "mrs",
    "ms",
    "miss",
    "dr",
    "prof",
    "sir",
    "madam",
    "mister",
    "herr",
    "frau",
    "mme",
    "mlle",
    "madame",
    "monsieur",
    "sr",
    "sra",
    "srta",
    "señor",
    "señora",
    "doña",
    "hallo",
    "liebe",
    "lieber",
    "sehr",
    "geehrte",
    "geehrter",
    "danke",
    "bonjour",
    "merci",
    "cher",
    "chère",
    "hola",
    "gracias",
    "saludos",
    "estimado",
    "estimada",
    "yours",
    "kind",
    "grüße",
    "grüßen",
    "gruß",
    "freundlichen",
    "cordialement",
    "atentamente",
    "warm",
    "welcome",
    "good",
    "morning",
    "afternoon",
    "evening",
    "night",
    "greetings",
    // English function words.
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "my",
    "your",
    "our",
    "his",
    "her",
    "their",
    "its",
    "we",
    "you",
    "he",
    "she",
    "it",
    "they",
    "and",
    "or",
    "but",
    "if",
    "in",
    "on",
    "at",
    "to",
    "for",
    "of",
    "with",
    "from",
    "by",
    "as",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "not",
    "no",
    "yes",
    "ok",
    "okay",
    "please",
    "there",
    "here",
    "what",
    "when",
    "where",
    "why",
    "how",
    "who",
    "which",
    "can",
    "could",
    "would",
    "should",
    "shall",
    "must",
    "let",
    "all",
    "any",
    "some",
    "every",
    "each",
    "new",
    "old",
    "next",
    "last",
    "first",
    "after",
    "before",
    "also",
    "just",
    "then",
    "so",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "sure",
    "sorry",
    "note",
    "see",
    "use",
    "using",
    "about",
    "into",
    "over",
    "under",
    "via",
    "per",
    "one",
    "two",
    "three",
    "today",
    "tomorrow",
    "yesterday",
    "now",
    "once",
    "again",
    "still",
    "only",
    "more",
    "most",
    "both",
    "other",
    "such",
    "since",
    "until",
    "while",
    "because",
    "however",
    "although",
    "though",
    // German, French, Spanish function words.
    "der",
    "die",
    "das",
    "den",
    "dem",
    "des",
    "ein",
    "eine",
    "und",
    "oder",
    "aber",
    "ich",
    "sie",
    "wir",
    "ihr",
    "es",
    "bitte",
    "mit",
    "von",
    "für",
    "auf",
    "bei",
    "nach",
    "ist",
    "le",
    "la",
    "les",
    "un",
    "une",
    "et",
    "ou",
    "je",
    "vous",
    "nous",
    "il",
    "elle",
    "pour",
    "avec",
    "dans",
    "sur",
    "est",
    "el",
    "los",
    "las",
    "una",
    "y",
    "o",
    "yo",
    "usted",
    "para",
    "con",
    "en",
    "por",
    "que",
    "mi",
    "su",
    "del",
    // Days and months (English, German, French, Spanish).
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "montag",
    "dienstag",
    "mittwoch",
    "donnerstag",
    "freitag",
    "samstag",
    "sonntag",
    "januar",
    "februar",
    "juni",
    "juli",
    "oktober",
    "dezember",
    "lundi",
    "mardi",
    "mercredi",
    "jeudi",
    "vendredi",
    "samedi",
    "dimanche",
    "janvier",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "lunes",
    "martes",
    "miércoles",
    "jueves",
    "viernes",
    "sábado",
    "domingo",
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    // Support, business and technical nouns.
    "team",
    "support",
    "service",
    "services",
    "customer",
    "customers",
    "client",
    "user",
    "users",
    "admin",
    "manager",
    "management",
    "department",
    "office",
    "company",
    "inc",
    "ltd",
    "llc",
    "gmbh",
    "ag",
    "corp",
    "co",
    "group",
    "bank",
    "university",
    "college",
    "school",
    "hospital",
    "clinic",
    "street",
    "road",
    "avenue",
    "lane",
    "drive",
    "court",
    "state",
    "new",
    "york",
    "server",
    "client",
    "error",
    "file",
    "data",
    "test",
    "tests",
    "code",
    "api",
    "account",
    "order",
    "invoice",
    "payment",
    "card",
    "number",
    "name",
    "email",
    "phone",
    "address",
    "status",
    "update",
    "release",
    "version",
    "project",
    "product",
    "system",
    "network",
    "cloud",
    "studio",
    "store",
    "pay",
    "app",
    "web",
    "online",
    "mobile",
    "security",
    "privacy",
    "policy",
    "terms",
    "news",
    "report",
    "summary",
    "overview",
    "introduction",
    "conclusion",
    "chapter",
    "section",
    "table",
    "figure",
    "step",
    "example",
    "question",
    "answer",
    "issue",
    "bug",
    "fix",
    "feature",
    "request",
    "response",
    "string",
    "str",
    "option",
    "vec",
    "bool",
    "int",
    "integer",
    "float",
    "list",
    "dict",
    "none",
    "null",
    "true",
    "false",
    "self",
    "object",
    "array",
    "map",
    "value",
    "result",
    "any",
    "unknown",
    "void",
    "type",
    "default",
    "optional",
    "text",
    "date",
    "time",
    "president",
    "minister",
    "senator",
    "governor",
    "mayor",
    "judge",
    "general",
    "captain",
    "professor",
    "doctor",
    "director",
    "officer",
    "agent",
    "editor",
    "author",
];

/// Product, company, language and place names, some also names or surnames (`Julia`,
/// `Rust`, `English`): a segment may not start with one unless a cue precedes it and it is a
/// given name ("Thanks Julia"), but one may follow a given name ("Heino Rust").
const SOFT: &[&str] = &[
    "hope",
    "apple",
    "google",
    "microsoft",
    "amazon",
    "meta",
    "netflix",
    "tesla",
    "intel",
    "oracle",
    "ibm",
    "github",
    "gitlab",
    "docker",
    "linux",
    "windows",
    "android",
    "iphone",
    "ipad",
    "mac",
    "macbook",
    "python",
    "rust",
    "java",
    "ruby",
    "perl",
    "julia",
    "swift",
    "go",
    "kotlin",
    "scala",
    "haskell",
    "jupyter",
    "excel",
    "word",
    "outlook",
    "teams",
    "slack",
    "zoom",
    "chrome",
    "firefox",
    "safari",
    "edge",
    "visa",
    "mastercard",
    "paypal",
    "stripe",
    "openai",
    "anthropic",
    "claude",
    "gemini",
    "llama",
    "mistral",
    "siri",
    "alexa",
    "cortana",
    "bing",
    "kafka",
    "redis",
    "postgres",
    "mongo",
    "nginx",
    "apache",
    "jenkins",
    "ansible",
    "terraform",
    "kubernetes",
    "helm",
    "grafana",
    "prometheus",
    "jira",
    "confluence",
    "london",
    "paris",
    "berlin",
    "madrid",
    "europe",
    "america",
    "english",
    "german",
    "french",
    "spanish",
    "christmas",
    "easter",
];

/// Given names that are also common words: a given name only after a cue (rules 2 and 3 of
/// the module doc ignore them).
const AMBIGUOUS: &[&str] = &[
    "will",
    "may",
    "june",
    "april",
    "august",
    "mark",
    "bill",
    "rose",
    "grant",
    "hope",
    "sunday",
    "apple",
    "joy",
    "faith",
    "grace",
    "dawn",
    "summer",
    "autumn",
    "winter",
    "spring",
    "amber",
    "crystal",
    "ruby",
    "pearl",
    "ivy",
    "holly",
    "iris",
    "violet",
    "lily",
    "daisy",
    "ginger",
    "honey",
    "candy",
    "sunny",
    "star",
    "sky",
    "river",
    "rocky",
    "chase",
    "hunter",
    "art",
    "guy",
    "pat",
    "sue",
    "van",
    "max",
    "ray",
    "gene",
    "rich",
    "penny",
    "sandy",
    "chance",
    "price",
    "king",
    "miles",
    "young",
    "wade",
    "frank",
    "jack",
    "don",
    "bob",
    "bud",
    "buck",
    "chip",
    "christian",
    "dean",
    "destiny",
    "harmony",
    "heather",
    "jade",
    "jasmine",
    "jewel",
    "justice",
    "liberty",
    "marina",
    "melody",
    "misty",
    "page",
    "paige",
    "patience",
    "royal",
    "sage",
    "scarlet",
    "serenity",
    "storm",
    "trinity",
    "victory",
    "an",
    "le",
    "la",
    "lee",
    "long",
    "major",
    "forest",
    "golden",
    "lane",
    "lincoln",
    "carter",
    "case",
    "cliff",
    "clay",
    "dale",
    "drew",
    "earl",
    "ernest",
    "glen",
    "hank",
    "harvey",
    "jay",
    "kit",
    "lance",
    "lou",
    "mason",
    "nick",
    "norm",
    "pierce",
    "reed",
    "rob",
    "rod",
    "russ",
    "ward",
    "warren",
    "win",
    "woody",
    "doc",
    "tex",
    "skip",
    "sonny",
    "bobby",
    "happy",
    "merry",
    "precious",
    "promise",
    "unique",
    "echo",
    "aurora",
    "nova",
    "luna",
    "stella",
    "angel",
    "baby",
    "bunny",
    "kitty",
    "lady",
    "queen",
    "princess",
    "tiffany",
    "mercedes",
    "porsche",
    "ferrari",
    "ford",
    "chevy",
    "dell",
];

/// Street and place words (the USPS street suffixes of Publication 28, Appendix C1, and their
/// German, French and Spanish counterparts; unit words), less those that are common surnames
/// (Hill, Lane, Park, Wells, ...): a run holding one is an address or a place ("Melissa
/// Station Apt"), never a name. So is a run after a house number ("12 Sarah Hills") or one
/// opening with a compass word ("West Lorraine", "North Jason").
const PLACE_WORDS: &[&str] = &[
    "street",
    "st",
    "road",
    "rd",
    "avenue",
    "ave",
    "ln",
    "drive",
    "court",
    "ct",
    "place",
    "pl",
    "boulevard",
    "blvd",
    "way",
    "station",
    "suite",
    "apt",
    "apartment",
    "unit",
    "parkway",
    "parkways",
    "spring",
    "springs",
    "mews",
    "track",
    "courts",
    "fork",
    "forks",
    "common",
    "commons",
    "point",
    "points",
    "estate",
    "estates",
    "orchard",
    "haven",
    "passage",
    "overpass",
    "stream",
    "throughway",
    "mount",
    "mountain",
    "mountains",
    "cape",
    "lock",
    "locks",
    "freeway",
    "summit",
    "union",
    "unions",
    "burg",
    "burgs",
    "corner",
    "corners",
    "crossing",
    "creek",
    "lake",
    "lakes",
    "island",
    "islands",
    "valley",
    "valleys",
    "ridge",
    "heights",
    "gardens",
    "garden",
    "square",
    "plaza",
    "terrace",
    "trail",
    "circle",
    "loop",
    "row",
    "walk",
    "highway",
    "expressway",
    "junction",
    "meadow",
    "meadows",
    "port",
    "ports",
    "shore",
    "shores",
    "view",
    "views",
    "village",
    "villages",
    "ville",
    "vista",
    "wharf",
    "alley",
    "bridge",
    "canyon",
    "center",
    "centre",
    "cliffs",
    "club",
    "dam",
    "divide",
    "extension",
    "falls",
    "ferry",
    "flat",
    "flats",
    "fort",
    "gateway",
    "harbor",
    "harbour",
    "hollow",
    "inlet",
    "isle",
    "knoll",
    "knolls",
    "landing",
    "neck",
    "oval",
    "pass",
    "path",
    "pine",
    "pines",
    "plain",
    "plains",
    "prairie",
    "ranch",
    "rapids",
    "route",
    "shoal",
    "skyway",
    "spur",
    "stravenue",
    "tunnel",
    "turnpike",
    "underpass",
    "viaduct",
    "bypass",
    "causeway",
    "curve",
    "drives",
    "grounds",
    "harbors",
    "motorway",
    "orchards",
    "ramp",
    "roads",
    "squares",
    "streets",
    "trafficway",
    "trace",
    "turn",
    "ways",
    "parade",
    "building",
    "floor",
    "room",
    "city",
    "county",
    "straße",
    "strasse",
    "str",
    "weg",
    "platz",
    "allee",
    "gasse",
    "damm",
    "ufer",
    "rue",
    "chemin",
    "allée",
    "impasse",
    "quai",
    "calle",
    "avenida",
    "paseo",
    "camino",
    "carrera",
    "via",
    "piazza",
];

/// Lowercase words that join the parts of a multi-part name (`van der Berg`, `de la Cruz`).
const PARTICLES: &[&str] = &[
    "van", "von", "der", "den", "de", "del", "della", "la", "le", "di", "da", "du", "dos", "das",
    "ter", "ten", "bin", "ibn", "al", "zu",
];

/// Whether `w` is one of [`PARTICLES`]. Asked for the lowercase word after nearly every
/// capitalized word of prose ("The quick"), so it answers on the length and the first byte
/// before comparing any text (a scan of the list was ~4 % of the detector on prose).
fn is_particle(w: &str) -> bool {
    let b = w.as_bytes();
    (2..=5).contains(&b.len())
        && matches!(b[0], b'a' | b'b' | b'd' | b'i' | b'l' | b't' | b'v' | b'z')
        && PARTICLES.contains(&w)
}

/// Finds person names in `text` (see the module doc); a [`Code`](super::Code) detector.
pub(crate) fn find(
    text: &str,
    mode: Mode,
    out: &mut Vec<Range<usize>>,
    meter: &mut Meter,
) -> Result<(), Exceeded> {
    meter.work(text.len())?;
    let b = text.as_bytes();
    // Where the last run ended: starts before it were read as part of that run.
    let mut done = 0;
    // The words of the current run and what the word lists say of each (reused: one
    // allocation each per call).
    let (mut words, mut kinds) = (Vec::new(), Vec::new());
    match mode {
        Mode::Gated => {
            // 32 bytes at a time, a bit per byte that may start a word (a capital or a
            // non-ASCII lead byte): only those are visited. Most chunks of prose hold none,
            // and the rest one or two (a per-byte loop over such chunks was a quarter of the
            // detector on prose). The tail is padded with zeros, which start nothing.
            let (whole, tail) = b.as_chunks::<32>();
            let mut last = [0; 32];
            last[..tail.len()].copy_from_slice(tail);
            let masks = whole.iter().map(starts_mask).chain([starts_mask(&last)]);
            for (k, mut starts) in masks.enumerate() {
                while starts != 0 {
                    let i = k * 32 + starts.trailing_zeros() as usize;
                    starts &= starts - 1;
                    if i >= done {
                        done = done.max(at(text, i, &mut words, &mut kinds, out, meter)?);
                    }
                }
            }
        }
        Mode::Exhaustive => {
            for (i, _) in text.char_indices() {
                if i >= done {
                    done = done.max(at(text, i, &mut words, &mut kinds, out, meter)?);
                }
            }
        }
    }
    Ok(())
}

/// A bit per byte of `chunk` (bit `k` for byte `k`) that may start a name word: an ASCII
/// capital or a non-ASCII lead byte (`0b11xx_xxxx`).
///
/// SWAR, eight bytes per `u64` (no `unsafe`, no target features): each byte's answer is
/// computed in its own high bit, then the four words' high bits are gathered into one mask.
/// LLVM did vectorize the per-byte fold this replaces, but badly (eight bytes per ~60
/// instructions, its variable shifts done through float conversions); this took ~6 % off the
/// detector's instructions on the support-bot fixture (`benches/pipeline.rs` under
/// callgrind). Most chunks of prose have no start, and return after the OR of the four words.
#[inline(always)]
fn starts_mask(chunk: &[u8; 32]) -> u32 {
    let (words, _) = chunk.as_chunks::<8>();
    let bits = |w: &[u8; 8]| start_bits(u64::from_le_bytes(*w));
    // A fold over the four words (vectorized two words to a register); a chunk with no start,
    // most of them, costs that alone. The rare others compute their words' bits again.
    if words.iter().fold(0, |any, w| any | bits(w)) == 0 {
        return 0;
    }
    words
        .iter()
        .enumerate()
        .fold(0, |m, (k, w)| m | gather_high_bits(bits(w)) << (8 * k))
}

/// The high bit of each byte of `x` (little-endian: byte `k` is bits `8k..8k+8`) set when that
/// byte is an ASCII capital or a UTF-8 lead byte of two or more bytes; every other bit clear.
/// No carry crosses a byte: the sums add at most `0x3F` to seven-bit values.
#[inline(always)]
fn start_bits(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let low = x & LOW7;
    // High bit set where the low seven bits are ≥ `A` (0x41), and where they are > `Z` (0x5A).
    let at_least_a = low + 0x3F3F_3F3F_3F3F_3F3F;
    let past_z = low + 0x2525_2525_2525_2525;
    let capital = at_least_a & !past_z & !x;
    // Bits 7 and 6 both set: `x << 1` moves each byte's bit 6 to its bit 7.
    let lead = x & (x << 1);
    (capital | lead) & HIGH
}

/// Bit `k` of the result is bit 7 of byte `k` of `flags` (whose other bits are clear). The
/// multiplication puts byte `k`'s bit, shifted down to bit `8k`, at bit `56 + k`: the
/// constant has bits `56 - 7k` for `k` in 0..8, and no two partial products share a bit, so
/// nothing carries.
#[inline(always)]
fn gather_high_bits(flags: u64) -> u32 {
    ((flags >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// Reads the run that starts at `i` if a name word starts there: pushes its names and returns
/// where the run ends (`i` when no name word starts at `i`).
fn at(
    text: &str,
    i: usize,
    words: &mut Vec<Range<usize>>,
    kinds: &mut Vec<u8>,
    out: &mut Vec<Range<usize>>,
    meter: &mut Meter,
) -> Result<usize, Exceeded> {
    let Some(first) = name_word(text, i) else {
        return Ok(i);
    };
    meter.work(1)?;
    // The run: name words, with particles and spaces between them.
    let mut end = first.end;
    words.clear();
    words.push(first);
    while let Some(next) = next_word(text, end) {
        meter.work(next.end - end)?;
        end = next.end;
        words.push(next);
    }
    meter.work(words.len())?;
    kinds.clear();
    kinds.extend(words.iter().map(|w| kinds_of(&text[w.clone()])));
    let compass = kinds[0] & COMPASS != 0;
    // After a number (`12 Main`): the last byte before the spaces and tabs is an ASCII digit
    // (a byte, not a character: no multi-byte character ends in one).
    let before = &text.as_bytes()[..i];
    let numbered = before
        .iter()
        .rev()
        .find(|&&c| c != b' ' && c != b'\t')
        .is_some_and(u8::is_ascii_digit);
    if compass || numbered || kinds.iter().any(|k| k & PLACE != 0) {
        return Ok(end);
    }
    // Segments: maximal stretches of words that are not guard words.
    let is_guard = |k: usize| kinds[k] & GUARD_WORD != 0;
    let mut k = 0;
    while k < words.len() {
        if is_guard(k) {
            k += 1;
            continue;
        }
        let mut j = k;
        while j < words.len() && !is_guard(j) {
            j += 1;
        }
        meter.work(j - k)?;
        if let Some(r) = segment(text, &words[k..j], kinds[k]) {
            out.push(r);
        }
        k = j;
    }
    Ok(end)
}

/// The name a segment of name words is, if one of the module doc's rules accepts it;
/// `first_kinds` are the [`kinds_of`] of its first word.
fn segment(text: &str, words: &[Range<usize>], first_kinds: u8) -> Option<Range<usize>> {
    let start = words[0].start;
    let first = &text[words[0].clone()];
    if first_kinds & SOFT_WORD != 0 {
        let named = given(first) != Given::No && cue_before(text, start);
        return named.then(|| start..words[words.len().min(MAX_NAME_WORDS) - 1].end);
    }
    if cue_before(text, start) {
        let last = &words[words.len().min(MAX_NAME_WORDS) - 1];
        return Some(start..last.end);
    }
    if words.len() > MAX_NAME_WORDS {
        return None;
    }
    let span = start..words[words.len() - 1].end;
    match given(first) {
        Given::No if words.len() == 1 => vocative(text, &words[0], "!").then(|| words[0].clone()),
        Given::No => None,
        Given::Yes | Given::Ambiguous if words.len() == 1 => {
            vocative(text, &words[0], ".,;!?").then(|| words[0].clone())
        }
        Given::Yes => Some(span),
        // "Amber Taylor" mid-sentence, not "Will Power" nor "Will Smith" opening a sentence.
        Given::Ambiguous => (words.len() >= 2
            && mid_sentence(text, start)
            && is_surname(&text[words[words.len() - 1].clone()]))
        .then_some(span),
    }
}

/// The next name word of a run that ends at `end`: after spaces and at most three particles.
fn next_word(text: &str, end: usize) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let mut p = end;
    let mut particles = 0;
    loop {
        let s = p;
        while p < b.len() && (b[p] == b' ' || b[p] == b'\t') && p - s < 3 {
            p += 1;
        }
        if p == s || p >= b.len() {
            return None;
        }
        if let Some(w) = name_word(text, p) {
            return Some(w);
        }
        // A middle initial: `Hans D. Otto`.
        if b[p].is_ascii_uppercase() && b.get(p + 1) == Some(&b'.') && b.get(p + 2) == Some(&b' ') {
            if particles == 3 {
                return None;
            }
            particles += 1;
            p += 2;
            continue;
        }
        let q = p + b[p..].iter().take_while(|c| c.is_ascii_lowercase()).count();
        if particles == 3 || q == p || !is_particle(&text[p..q]) {
            return None;
        }
        particles += 1;
        p = q;
    }
}

/// Whether `c` glues a capitalized word to the one before it (`a_Name`, `@Name`): no name
/// starts after it. A `match`, not a search of a list: it is asked for nearly every
/// capitalized word, twice.
fn is_glue(c: char) -> bool {
    matches!(
        c,
        '_' | '/'
            | '\\'
            | '@'
            | '#'
            | '$'
            | '<'
            | '>'
            | '`'
            | '~'
            | '&'
            | '%'
            | '*'
            | '+'
            | '^'
            | '|'
    )
}

/// True when no name word can start at byte `i`, told by its first two or three bytes when
/// they are ASCII: it does not start with a capital, or it ends after its one capital (`I'm`,
/// `A `, `I-5`). The cheap answer for most capitals of prose (`I` above all); [`name_word`]'s
/// loop gives `None` for every such start, and decides every other one itself.
fn cannot_start(b: &[u8], i: usize) -> bool {
    let Some(&c) = b.get(i) else {
        return true;
    };
    if !c.is_ascii() {
        return false;
    }
    if !c.is_ascii_uppercase() {
        return true;
    }
    match b.get(i + 1) {
        None => true,
        Some(&n) if !n.is_ascii() || n.is_ascii_alphabetic() => false,
        // A hyphen or apostrophe joins only a capital after it (`O'Brien`).
        Some(b'-' | b'\'') => b
            .get(i + 2)
            .is_none_or(|&m| m.is_ascii() && !m.is_ascii_uppercase()),
        Some(_) => true,
    }
}

/// The name word starting at byte `i`, if one does (see the module doc's shape rules).
fn name_word(text: &str, i: usize) -> Option<Range<usize>> {
    if cannot_start(text.as_bytes(), i) {
        return None;
    }
    match ascii_name_word(text.as_bytes(), i) {
        Some(answer) => answer,
        None => read_name_word(text, i),
    }
}

/// [`read_name_word`]'s answer for the commonest shape, read byte by byte: an ASCII capital
/// then ASCII lowercase letters, with ASCII bytes on both sides. `None` (not decided) for
/// anything else (a second capital, a joiner `-` `'`, a non-ASCII byte within two bytes
/// before or one after), which [`read_name_word`] reads by character. `i` must hold a byte
/// for which [`cannot_start`] is false. Most capitalized words of prose take this path, and
/// skip the character loop's UTF-8 decoding and `Option<char>` bookkeeping.
fn ascii_name_word(b: &[u8], i: usize) -> Option<Option<Range<usize>>> {
    if !b[i].is_ascii_uppercase() {
        return None;
    }
    // The byte before: glued to a word or to code (see `read_name_word`).
    if i > 0 {
        let before = b[i - 1];
        if !before.is_ascii() {
            return None;
        }
        if before.is_ascii_alphanumeric() || is_glue(char::from(before)) {
            return Some(None);
        }
        if before == b'.' && i > 1 {
            let beyond = b[i - 2];
            if !beyond.is_ascii() {
                return None;
            }
            if beyond.is_ascii_alphanumeric() || beyond == b')' || beyond == b'_' {
                return Some(None);
            }
        }
    }
    let end = i
        + 1
        + b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_lowercase())
            .count();
    let next = b.get(end).copied();
    match next {
        Some(c) if !c.is_ascii() || c.is_ascii_uppercase() || c == b'-' || c == b'\'' => {
            return None;
        }
        _ => {}
    }
    // At least one lowercase letter after the capital; at most MAX_WORD bytes.
    if end == i + 1 || end - i > MAX_WORD {
        return Some(None);
    }
    let Some(c) = next else {
        return Some(Some(i..end));
    };
    // Glued to code after it (`Foo_bar`, `Foo(`, `Foo2`, `Foo::new`, `Foo.bar`).
    if c.is_ascii_digit() || matches!(c, b'_' | b'(' | b'<' | b'`' | b'@' | b'#' | b'$') {
        return Some(None);
    }
    if c == b':' && b.get(end + 1) == Some(&b':') {
        return Some(None);
    }
    if c == b'.' {
        match b.get(end + 1) {
            Some(d) if !d.is_ascii() => return None,
            Some(d) if d.is_ascii_alphanumeric() => return Some(None),
            _ => {}
        }
    }
    Some(Some(i..end))
}

/// [`name_word`] without the shortcuts: reads the word character by character. Not inlined
/// into [`name_word`], so the shortcuts' path does not pay for this loop's registers.
#[inline(never)]
fn read_name_word(text: &str, i: usize) -> Option<Range<usize>> {
    let mut back = text[..i].chars().rev();
    let (before, beyond) = (back.next(), back.next());
    // A `.` glues only to a word before it (`obj.Name`), not to a sentence end (veil#16).
    let dot_glued =
        before == Some('.') && beyond.is_some_and(|c| c.is_alphanumeric() || c == ')' || c == '_');
    if let Some(c) = before
        && (c.is_alphanumeric() || is_glue(c) || dot_glued)
    {
        // Not `=` nor `:`: `name=Jo`, `Name:Jo` are cues.
        return None;
    }
    let mut end = i;
    let mut part_start = i;
    let mut chars = text[i..].char_indices().peekable();
    let mut prev: Option<char> = None;
    // Counted on the way: the word's characters and whether one is lowercase.
    let (mut count, mut lowercase) = (0, false);
    while let Some((o, c)) = chars.next() {
        let at = i + o;
        if c.is_uppercase() {
            let part = &text[part_start..at];
            let ok =
                at == part_start || matches!(part, "Mc" | "Mac" | "De" | "Di" | "La" | "Le" | "O");
            if !ok {
                return None; // CamelCase or ALL CAPS.
            }
        } else if c.is_lowercase() {
            if at == part_start {
                return None; // A part starts with a capital.
            }
            lowercase = true;
        } else if (c == '-' || c == '\'' || c == '’')
            && prev.is_some_and(char::is_alphabetic)
            && chars.peek().is_some_and(|&(_, n)| n.is_uppercase())
        {
            part_start = at + c.len_utf8();
        } else {
            break;
        }
        prev = Some(c);
        count += 1;
        end = at + c.len_utf8();
        if end - i > MAX_WORD {
            return None;
        }
    }
    // At least one capital and one lowercase letter, and not a lone initial.
    if count < 2 || !lowercase {
        return None;
    }
    let after = &text[end..];
    // Glued to code: `Foo_bar`, `Foo(`, `Foo<T>`, `Foo::new`, `Foo.bar`, `Foo2`.
    let glued = after
        .chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || ['_', '(', '<', '`', '@', '#', '$'].contains(&c));
    let path = after.starts_with("::")
        || after.starts_with('.') && after[1..].starts_with(|c: char| c.is_alphanumeric());
    if glued || path {
        return None;
    }
    Some(i..end)
}

/// [`CUES`] and [`SIGNOFFS`] by their last byte, the one the text before a name must end
/// with; each with whether it is a sign-off. Most capitalized words follow text that ends no
/// cue: one bucket is tried, not every cue.
static CUES_BY_LAST: LazyLock<[Vec<(&'static str, bool)>; 256]> = LazyLock::new(|| {
    let mut by: [Vec<(&'static str, bool)>; 256] = std::array::from_fn(|_| Vec::new());
    for (list, signoff) in [(CUES, false), (SIGNOFFS, true)] {
        for &c in list {
            by[usize::from(*c.as_bytes().last().expect("cues are not empty"))].push((c, signoff));
        }
    }
    by
});

/// Whether a cue ends at most [`MAX_GAP`] bytes of gap before `start`.
fn cue_before(text: &str, start: usize) -> bool {
    let b = text.as_bytes();
    let mut i = start;
    while i > 0 && start - i < MAX_GAP && b" \t\r\n,:=\"'(".contains(&b[i - 1]) {
        i -= 1;
    }
    // Particles between a cue and the name ("Herr von Weizsäcker"): at most three.
    for _ in 0..3 {
        let w = b[..i]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_lowercase())
            .count();
        let p = i - w;
        if w == 0 || p == 0 || b[p - 1] != b' ' || !is_particle(&text[p..i]) {
            break;
        }
        i = p - 1;
    }
    let gap = &b[i..start];
    // ASCII only was stepped over, so `i` is a char boundary.
    let lo = text.ceil_char_boundary(i.saturating_sub(CUE_WINDOW));
    let mut buf = [0u8; CUE_WINDOW];
    let w = &mut buf[..i - lo];
    w.copy_from_slice(&b[lo..i]);
    w.make_ascii_lowercase();
    let signoff = gap.contains(&b',') || gap.contains(&b'\n');
    let Some(&last) = w.last() else {
        return false;
    };
    let cues = CUES_BY_LAST[usize::from(last)]
        .iter()
        .filter(|&&(_, only_signoff)| signoff || !only_signoff);
    cues.into_iter().any(|&(c, _)| {
        w.ends_with(c.as_bytes()) && {
            // A word boundary before the cue: not a letter or digit of any script, nor a `.`
            // right after one (`m.` is no cue in `a.m.`); `.Dear`, `«Dear` are cues (veil#16).
            let mut back = text[..lo + w.len() - c.len()].chars().rev();
            match (back.next(), back.next()) {
                (Some(a), _) if a.is_alphanumeric() => false,
                (Some('.'), Some(b)) => !b.is_alphanumeric(),
                _ => true,
            }
        }
    })
}

/// A lone given name used as a vocative: `, Name!` after a lowercase word.
fn vocative(text: &str, w: &Range<usize>, ends: &str) -> bool {
    let before = &text[..w.start];
    let Some(rest) = before.strip_suffix(", ") else {
        return false;
    };
    let prev_lower = rest
        .split(|c: char| !c.is_alphabetic())
        .next_back()
        .and_then(|p| p.chars().next())
        .is_some_and(char::is_lowercase);
    let next = text[w.end..].chars().next();
    prev_lower && next.is_some_and(|c| ends.contains(c))
}

/// What the gazetteer says of a word as a given name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Given {
    /// Not a given name.
    No,
    /// A given name that is also a common word ([`AMBIGUOUS`]).
    Ambiguous,
    /// A given name.
    Yes,
}

/// Whether a word (any case; its first part when hyphenated) is a given name.
fn given(word: &str) -> Given {
    let first = word.split(['-', '\'', '’']).next().unwrap_or(word);
    let mut buf = [0; 64];
    let Some(lower) = lower(first, &mut buf) else {
        return Given::No;
    };
    if NAMES.get(lower.as_bytes()).is_none_or(|f| f & GIVEN == 0) {
        Given::No
    } else if KINDS.get(lower).is_some_and(|k| k & AMBIGUOUS_WORD != 0) {
        Given::Ambiguous
    } else {
        Given::Yes
    }
}

/// Whether a word (any case) is a surname of the gazetteer.
fn is_surname(word: &str) -> bool {
    let mut buf = [0; 64];
    lower(word, &mut buf)
        .and_then(|l| NAMES.get(l.as_bytes()))
        .is_some_and(|f| f & SURNAME != 0)
}

/// Whether `start` follows a lowercase word or a comma on the same line (not a sentence or
/// line start, where any word is capitalized).
fn mid_sentence(text: &str, start: usize) -> bool {
    let before = text[..start].trim_end_matches([' ', '\t']);
    before
        .chars()
        .next_back()
        .is_some_and(|c| c.is_lowercase() || c == ',')
}

/// Bits of [`WordKinds`]: the word is in [`GUARD`].
const GUARD_WORD: u8 = 1;
/// In [`SOFT`].
const SOFT_WORD: u8 = 2;
/// In [`AMBIGUOUS`].
const AMBIGUOUS_WORD: u8 = 4;
/// In [`PLACE_WORDS`].
const PLACE: u8 = 8;
/// A compass word (`north`, `south`, `east`, `west`).
const COMPASS: u8 = 16;

static KINDS: LazyLock<WordKinds> = LazyLock::new(|| {
    let compass: &[&str] = &["north", "south", "east", "west"];
    let mut kinds = WordKinds::default();
    for (list, bit) in [
        (GUARD, GUARD_WORD),
        (SOFT, SOFT_WORD),
        (AMBIGUOUS, AMBIGUOUS_WORD),
        (PLACE_WORDS, PLACE),
        (compass, COMPASS),
    ] {
        for &w in list {
            *kinds.entry(w).or_default() |= bit;
        }
    }
    kinds
});

/// The word lists a word (any case, at most 24 bytes) is in, as [`WordKinds`] bits (0 for
/// none, and for a longer word). Lowercased on the stack and looked up once.
fn kinds_of(word: &str) -> u8 {
    let mut buf = [0; 64];
    if word.len() > 24 {
        return 0;
    }
    lower(word, &mut buf)
        .and_then(|l| KINDS.get(l).copied())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-byte answer `starts_mask` must give, read one byte at a time.
    fn starts_mask_bytewise(chunk: &[u8; 32]) -> u32 {
        chunk.iter().enumerate().fold(0, |m, (j, &c)| {
            m | (u32::from(c.is_ascii_uppercase() || c >= 0xC0) << j)
        })
    }

    /// The SWAR mask agrees with the byte-at-a-time one: every byte value at every position
    /// of a chunk of every kind of neighbour (a capital, a lead byte, a continuation byte,
    /// `@` and `[` just outside `A..=Z`, 0xFF, 0x00), and 20,000 chunks of random bytes.
    #[test]
    fn starts_mask_agrees_with_each_byte() {
        for fill in [b'a', b'A', 0xC3, 0x80, b'@', b'[', 0xFF, 0x00, 0xBF, 0x7F] {
            for pos in 0..32 {
                for v in 0..=255u8 {
                    let mut chunk = [fill; 32];
                    chunk[pos] = v;
                    assert_eq!(
                        starts_mask(&chunk),
                        starts_mask_bytewise(&chunk),
                        "byte {v:#04x} at {pos} among {fill:#04x}"
                    );
                }
            }
        }
        for _ in 0..20_000 {
            let mut chunk = [0; 32];
            rand::fill(&mut chunk[..]);
            assert_eq!(
                starts_mask(&chunk),
                starts_mask_bytewise(&chunk),
                "{chunk:?}"
            );
        }
    }

    /// `cannot_start` only ever says what reading the word would: every start of three characters
    /// from an alphabet of capitals (`O` joins by apostrophe), lowercase, separators, a digit
    /// and non-ASCII letters and quotes, between a space and a lowercase word.
    #[test]
    fn cannot_start_agrees_with_name_word() {
        let alphabet = [
            "A", "O", "B", "a", "b", " ", "-", "'", "’", "2", ".", "_", "(", "É", "é",
        ];
        let mut told = 0;
        for x in alphabet {
            for y in alphabet {
                for z in alphabet {
                    for tail in ["", "n", " x"] {
                        let text = format!(" {x}{y}{z}{tail}");
                        if cannot_start(text.as_bytes(), 1) {
                            told += 1;
                            assert_eq!(read_name_word(&text, 1), None, "{text:?}");
                        }
                    }
                }
            }
        }
        // The shortcut answers for most of these starts, not for none.
        assert!(told > 5000, "{told}");
        assert_eq!(name_word(" I'm here", 1), None);
        assert_eq!(name_word(" O'Brien said", 1), Some(1..8));
        assert_eq!(name_word(" Anna-Lena went", 1), Some(1..10));
    }

    /// The byte-wise shortcut gives what the character loop would, wherever it answers: every
    /// two characters before, word and two characters after from an alphabet of the bytes
    /// its rules name (capitals, lowercase, digits, the glue and joiner characters, `.` `:`
    /// `)`) and non-ASCII letters and quotes, for words of one capital, of up to 41 bytes,
    /// and with inner capitals.
    #[test]
    fn ascii_name_word_agrees_with_read_name_word() {
        let alphabet = [
            "", " ", "a", "Z", "7", ".", ":", ")", "_", "(", "-", "'", "’", "é", "É", "\n", "@",
            "<", "`", "#", "$", "/",
        ];
        let long = format!("A{}", "b".repeat(MAX_WORD - 1));
        let longer = format!("A{}", "b".repeat(MAX_WORD));
        let words = [
            "A",
            "Ab",
            "Abc",
            "Mc",
            "McD",
            "Ann",
            long.as_str(),
            longer.as_str(),
        ];
        let (mut answered, mut tried) = (0, 0);
        for p1 in alphabet {
            for p2 in alphabet {
                for w in words {
                    for s1 in alphabet {
                        for s2 in alphabet {
                            let text = format!("{p1}{p2}{w}{s1}{s2}");
                            let i = p1.len() + p2.len();
                            tried += 1;
                            if let Some(answer) = ascii_name_word(text.as_bytes(), i) {
                                answered += 1;
                                assert_eq!(answer, read_name_word(&text, i), "{text:?}");
                            }
                            assert_eq!(name_word(&text, i), read_name_word(&text, i), "{text:?}");
                        }
                    }
                }
            }
        }
        // The shortcut decides most of these, not all.
        assert!(
            answered * 2 > tried && answered < tried,
            "{answered} of {tried}"
        );
    }
}
