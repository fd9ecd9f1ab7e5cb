//! # Keys: the master secrets and the purpose keys derived from them.
//!
//! The keys dir holds `master.keys` (mode 0600): one line per master secret, `k<id>:<64 hex>`,
//! oldest first. `VEIL_MASTER_KEY` may carry the same text instead (or a bare 64-hex secret,
//! which is key id 1). New writes use the newest key ([`Keyring::current`]); every older id stays
//! readable.
//!
//! Each purpose gets its own key, derived with `blake3::derive_key` and a context string that
//! names the purpose, so a key leaked from one use (say, the pseudonym key) reveals nothing
//! about another (say, seal wrapping). Identity keys (pseudonyms, content hashes, API key
//! fingerprints) are always derived from the *oldest* secret, [`Keyring::identity`]: they must
//! stay stable across rotations or pseudonyms would change and `forget --user` would miss old
//! records.
//!
//! Secret-holding types zeroize on drop and print `<redacted>` in `Debug`.
//!
//! The keys dir itself is created 0700 ([`prepare_keys_dir`]): the secrets in it are 0600
//! already, but a listable dir tells every local user which keys exist and when they changed,
//! and a dir others can write to would let them swap `ca.pem`. An existing dir that group or
//! others can enter gets a warning at start (veil does not change modes it did not set).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

/// File name of the master secrets inside the keys dir.
pub const MASTER_FILE: &str = "master.keys";
/// Environment variable that may carry the master secrets instead of the file.
pub const MASTER_ENV: &str = "VEIL_MASTER_KEY";

/// Identifies one master secret. Written next to everything encrypted or wrapped with it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.0)
    }
}

/// Serialized as its text form (`k<number>`).
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parsed from its text form (`k<number>`).
impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        s.strip_prefix('k')
            .and_then(|n| n.parse().ok())
            .map(KeyId)
            .ok_or_else(|| KeyError::Invalid(format!("bad key id {s:?} (expected k<number>)")))
    }
}

/// What a derived key is for. Each variant has its own derivation context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Purpose {
    /// Keyed BLAKE3 of user IDs and detector matches (`u_…`, `[EMAIL:e_…]`).
    Pseudonym,
    /// Keyed BLAKE3 of content fields (`h_…`).
    ContentHash,
    /// Keyed BLAKE3 of credentials (`fp_…`), so spend can be attributed per API key.
    Fingerprint,
    /// AES-256-GCM key for `encrypt` fields (`enc:v1:…`).
    FieldEncryption,
    /// AES-256-GCM key that wraps the per-exchange data keys of the sealed store.
    SealWrap,
}

impl Purpose {
    fn context(self) -> &'static str {
        match self {
            Purpose::Pseudonym => "veil 2026-11 pseudonym v1",
            Purpose::ContentHash => "veil 2026-11 content hash v1",
            Purpose::Fingerprint => "veil 2026-11 credential fingerprint v1",
            Purpose::FieldEncryption => "veil 2026-11 field encryption v1",
            Purpose::SealWrap => "veil 2026-11 seal wrap v1",
        }
    }
}

/// A 256-bit key derived for one purpose. Zeroized on drop.
#[derive(Clone)]
pub struct DerivedKey(Zeroizing<[u8; 32]>);

impl DerivedKey {
    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Keyed BLAKE3 of `data` under this key.
    pub fn mac(&self, data: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, data)
    }
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

/// One master secret. Zeroized on drop.
pub struct MasterKey {
    id: KeyId,
    secret: Zeroizing<[u8; 32]>,
}

impl MasterKey {
    /// Wraps raw secret bytes.
    pub fn from_bytes(id: KeyId, secret: [u8; 32]) -> Self {
        MasterKey {
            id,
            secret: Zeroizing::new(secret),
        }
    }

    /// A fresh random secret.
    pub fn generate(id: KeyId) -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let key = Self::from_bytes(id, secret);
        secret.zeroize();
        key
    }

    /// This secret's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key for `purpose`.
    pub fn derive(&self, purpose: Purpose) -> DerivedKey {
        DerivedKey(Zeroizing::new(blake3::derive_key(
            purpose.context(),
            &self.secret[..],
        )))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, <redacted>)", self.id)
    }
}

/// Why keys could not be loaded or saved.
#[derive(Debug)]
pub enum KeyError {
    /// No master secret in the keys dir or the environment.
    Missing(PathBuf),
    /// The file or variable does not hold valid keys.
    Invalid(String),
    /// Reading or writing the keys dir failed.
    Io(PathBuf, std::io::Error),
    /// A file this process was about to create exists now: another process created it
    /// meanwhile (two first starts on one keys dir). Never overwritten.
    Appeared(PathBuf),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing(p) => write!(
                f,
                "no master key: {} does not exist and {MASTER_ENV} is not set (run `veil run` once to create keys, or copy the keys dir of the instance that wrote the data)",
                p.display()
            ),
            KeyError::Invalid(why) => write!(f, "invalid master key: {why}"),
            KeyError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            KeyError::Appeared(p) => write!(
                f,
                "{} was created by another process while this veil was starting (two first starts on one keys dir?); it was left as it is: start again to use it",
                p.display()
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// All master secrets, by id.
pub struct Keyring {
    keys: BTreeMap<KeyId, MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl Keyring {
    /// A keyring holding exactly `key` (tests and tools).
    pub fn single(key: MasterKey) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(key.id, key);
        Keyring { keys }
    }

    /// Loads the keys from `VEIL_MASTER_KEY` or `<dir>/master.keys`; missing → error.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        if let Ok(text) = std::env::var(MASTER_ENV) {
            let text = Zeroizing::new(text);
            return Self::parse(&text).map_err(|e| match e {
                KeyError::Invalid(why) => KeyError::Invalid(format!("{MASTER_ENV}: {why}")),
                other => other,
            });
        }
        let path = dir.join(MASTER_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Self::parse(&text).map_err(|e| match e {
                    KeyError::Invalid(why) => {
                        KeyError::Invalid(format!("{}: {why}", path.display()))
                    }
                    other => other,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::Missing(path)),
            Err(e) => Err(KeyError::Io(path, e)),
        }
    }

    /// Loads the keys, creating `<dir>/master.keys` (0600) with one fresh secret if neither
    /// the file nor the environment variable exists. Never replaces a file that appears
    /// meanwhile (another process creating the keys at the same moment): that one is loaded.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let mut unsaved = Unsaved::default();
        let ring = Self::load_or_generate(dir, &mut unsaved)?;
        match unsaved.save() {
            Ok(()) => Ok(ring),
            Err(KeyError::Appeared(_)) => Self::load(dir),
            Err(e) => Err(e),
        }
    }

    /// [`Keyring::load`], or with neither the file nor the environment variable, one fresh
    /// secret (id 1) that is only in memory: its `master.keys` is added to `unsaved`, to be
    /// written when the caller is sure it will use it ([`Unsaved::save`]).
    pub fn load_or_generate(dir: &Path, unsaved: &mut Unsaved) -> Result<Self, KeyError> {
        match Self::load(dir) {
            Err(KeyError::Missing(path)) => {
                let ring = Keyring::single(MasterKey::generate(KeyId(1)));
                unsaved.add(
                    path,
                    ring.to_text().as_bytes(),
                    Unsaved::SECRET,
                    "master key",
                );
                Ok(ring)
            }
            other => other,
        }
    }

    /// Parses `k<id>:<hex>` lines, or a single bare hex secret (id 1).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hex) = match line.split_once(':') {
                Some((id, hex)) => (id.parse::<KeyId>()?, hex),
                None => (KeyId(1), line),
            };
            let secret = parse_hex32(hex).ok_or_else(|| {
                KeyError::Invalid(format!("line {}: expected 64 hex digits", n + 1))
            })?;
            if keys.insert(id, MasterKey::from_bytes(id, secret)).is_some() {
                return Err(KeyError::Invalid(format!("key id {id} appears twice")));
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid("no key found".into()));
        }
        Ok(Keyring { keys })
    }

    /// Writes `<dir>/master.keys` with mode 0600 (atomically: temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), KeyError> {
        write_secret_file(&dir.join(MASTER_FILE), self.to_text().as_bytes())
    }

    /// The `master.keys` text: one `k<id>:<64 hex>` line per secret, oldest first.
    fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        for key in self.keys.values() {
            text.push_str(&format!("{}:", key.id));
            for b in key.secret.iter() {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        text
    }

    /// The newest key: used for every new wrap and encryption.
    pub fn current(&self) -> &MasterKey {
        self.keys
            .values()
            .next_back()
            .expect("invariant: a keyring is never empty")
    }

    /// The oldest key: identity keys (pseudonyms, hashes, fingerprints) derive from it so they
    /// stay stable across rotations.
    pub fn identity(&self) -> &MasterKey {
        self.keys
            .values()
            .next()
            .expect("invariant: a keyring is never empty")
    }

    /// The key with `id`, if this keyring has it.
    pub fn get(&self, id: KeyId) -> Option<&MasterKey> {
        self.keys.get(&id)
    }

    /// Every key id, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    /// Adds a fresh key with the next id and returns that id. The caller saves.
    pub fn rotate(&mut self) -> KeyId {
        let id = KeyId(self.current().id.0 + 1);
        self.keys.insert(id, MasterKey::generate(id));
        id
    }
}

/// Prefix of user pseudonyms.
pub const USER_PSEUDONYM_PREFIX: &str = "u_";

/// A user pseudonym: `u_` followed by 16 lowercase hex digits, never a raw user ID.
///
/// Only [`pseudonymize_user`] / [`pseudonymize_user_with`] build one from a raw ID, and
/// [`UserPseudonym::parse`] from text that already is a pseudonym (operator input, a stored
/// index entry). So a `Record`, the sealed store's index and forget-by-user cannot be handed a
/// raw user ID by mistake: the type says it went through the keyed hash (rejected: a `String`
/// checked at each boundary, which the sealed store did and the ledger did not).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserPseudonym(String);

/// Text that is not a user pseudonym (`u_` + 16 lowercase hex digits); holds no input, since
/// the input may be a raw user ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAPseudonym;

impl fmt::Display for NotAPseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a user pseudonym (u_ + 16 lowercase hex digits)")
    }
}

impl std::error::Error for NotAPseudonym {}

impl UserPseudonym {
    /// Checked parse of text that should already be a pseudonym (`u_` + 16 lowercase hex
    /// digits, as [`is_user_pseudonym`]). Errors: [`NotAPseudonym`] for anything else, raw
    /// user IDs included.
    pub fn parse(s: &str) -> Result<UserPseudonym, NotAPseudonym> {
        if is_user_pseudonym(s) {
            Ok(UserPseudonym(s.to_string()))
        } else {
            Err(NotAPseudonym)
        }
    }

    /// The pseudonym as text (`u_…`, 18 ASCII characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pseudonym as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserPseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserPseudonym {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checked like [`UserPseudonym::parse`]: a document that carries a raw user ID where a
/// pseudonym belongs fails to decode (the error holds no input).
impl<'de> serde::Deserialize<'de> for UserPseudonym {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        UserPseudonym::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for UserPseudonym {
    type Err = NotAPseudonym;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserPseudonym::parse(s)
    }
}

/// The pseudonym of raw user ID `raw_user`: `u_` followed by the first 16 hex digits (64 bits)
/// of keyed BLAKE3 of the UTF-8 bytes of `raw_user` under
/// `keyring.identity().derive(Purpose::Pseudonym)`.
///
/// This is the one definition every part of veil uses (the rules engine for `x-veil-user` and
/// detected user IDs, the sealed store's index, `veil forget --user`), so a pseudonym computed
/// anywhere matches the others. It derives from the *identity* (oldest) key, so it survives key
/// rotation. 64 bits keep collisions negligible for any realistic number of users while
/// staying short in logs. The raw ID is used as given (no trimming or case folding).
pub fn pseudonymize_user(keyring: &Keyring, raw_user: &str) -> UserPseudonym {
    pseudonymize_user_with(&keyring.identity().derive(Purpose::Pseudonym), raw_user)
}

/// [`pseudonymize_user`] with the pseudonym key already derived (the rules engine holds it).
/// The one definition of a user pseudonym: the sealed store's index, `forget --user` and the
/// exported records must all agree, or a deletion request would miss records. The `user\0`
/// domain keeps user pseudonyms apart from detector pseudonyms made with the same key.
pub fn pseudonymize_user_with(pseudonym_key: &DerivedKey, raw_user: &str) -> UserPseudonym {
    let mut h = blake3::Hasher::new_keyed(pseudonym_key.bytes());
    h.update(b"user\0");
    h.update(raw_user.as_bytes());
    let hex = h.finalize().to_hex();
    let mut out = String::with_capacity(18);
    out.push_str(USER_PSEUDONYM_PREFIX);
    out.push_str(&hex[..16]);
    UserPseudonym(out)
}

/// True when `s` has the shape of a user pseudonym (`u_` + 16 lowercase hex digits).
pub fn is_user_pseudonym(s: &str) -> bool {
    s.strip_prefix(USER_PSEUDONYM_PREFIX).is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Creates `dir` and any missing parents with mode 0700 (before the umask, which can only
/// narrow it); directories that already exist keep their mode.
pub fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| KeyError::Io(dir.to_path_buf(), e))
}

/// The permission bits of `path` when group or others have any access to it (`None` when
/// only the owner has, or it cannot be read).
pub fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Creates the keys dir 0700 on first run, or warns when an existing one is open to group or
/// others (with the `chmod` that fixes it). Every command that writes into the keys dir calls
/// this first.
pub fn prepare_keys_dir(dir: &Path) -> Result<(), KeyError> {
    create_private_dir(dir)?;
    remove_stale_temps(dir);
    if let Some(mode) = loose_mode(dir) {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the keys dir is open to other local users (they can list it, and see when keys change); run `chmod 700 {}`",
            dir.display()
        );
    }
    Ok(())
}

/// Removes the temp files (`write_temp`'s `.<name>.<pid>-<16 hex>.tmp`) that a process
/// killed between writing a key file and linking or renaming it left in `dir`: those whose
/// pid no longer runs (or is this process's own: an earlier run's, since this runs before any
/// key file is written), written over a minute ago. A file of another live process (or one
/// whose liveness cannot be told: another user's) is left, and so is any name not of that
/// exact shape. Best effort: a dir that cannot be read is skipped, a file that cannot be
/// removed is logged. On a keys dir shared between hosts, a clock more than a minute ahead of
/// the file server's can take another host's temp file for a stale one: that host's key write
/// then fails with an error and writes nothing (its existing key files are untouched).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        // Our own pid is an earlier run's (a container's veil restarted as pid 1): this runs
        // before this process writes any key file.
        let gone = pid == std::process::id()
            || i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| {
                    rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
                });
        // A pid in another pid namespace (two containers sharing the keys volume) looks gone
        // while its process writes: a temp file lives for milliseconds, so one older than a
        // minute is left over whatever the pid says.
        let old = entry
            .metadata()
            .ok()
            .filter(fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_TEMP_AGE);
        if !gone || !old {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                "removed a temp file left by a veil that stopped while writing a key file"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not remove a temp file left by a veil that stopped while writing a key file"
            ),
        }
    }
}

/// How old a temp file of a process that no longer runs must be before it is removed.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The pid in a [`write_temp`] name (`.<name>.<pid>-<16 lowercase hex>.tmp`), `None` for any
/// other name.
fn temp_owner(file_name: &str) -> Option<u32> {
    let stem = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, tail) = stem.rsplit_once('.')?;
    let (pid, random) = tail.split_once('-')?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (!name.is_empty()
        && random.len() == 16
        && random.chars().all(hex)
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit()))
    .then(|| pid.parse().ok())
    .flatten()
}

/// Writes a secret file with mode 0600 from the start (never world-readable, not even briefly),
/// via a temp file and rename so a crash leaves the old file or the new one. A missing parent
/// dir is created 0700. Replaces the file if it exists (a rotation's new `master.keys`); a
/// file that must not be replaced is made with [`create_file`].
pub fn write_secret_file(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    let tmp = write_temp(path, data, 0o600)?;
    let renamed = fs::rename(&tmp, path).map_err(|e| KeyError::Io(path.to_path_buf(), e));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    sync_parent(path);
    Ok(())
}

/// Creates `path` holding `data` with permission bits `mode` (0600 for a secret), complete or
/// not at all: written and flushed under a temp name in the same dir, then linked to `path`,
/// which fails if `path` exists, so a file another process created meanwhile is never
/// replaced ([`KeyError::Appeared`]). A missing parent dir is created 0700.
pub fn create_file(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    let tmp = write_temp(path, data, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A symlink to nothing (a secrets mount not there yet) is not another process.
            if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
                && fs::metadata(path).is_err()
            {
                return Err(KeyError::Io(
                    path.to_path_buf(),
                    std::io::Error::other("a symbolic link to a file that does not exist"),
                ));
            }
            Err(KeyError::Appeared(path.to_path_buf()))
        }
        // A file system without hard links (some FUSE and SMB mounts): the file is created
        // in place, exclusively, so it is still never replaced (a crash mid-write can leave
        // it short, which the next start reports as invalid).
        Err(e)
            if [rustix::io::Errno::PERM, rustix::io::Errno::OPNOTSUPP]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            create_in_place(path, data, mode)
        }
        Err(e) => Err(KeyError::Io(path.to_path_buf(), e)),
    }
}

/// [`create_file`] where hard links are not supported: `path` created exclusively with
/// `mode`, written and flushed; removed again if the write fails.
fn create_in_place(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    write_new(path, data, mode).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Appeared(path.to_path_buf()),
        _ => KeyError::Io(path.to_path_buf(), e),
    })?;
    sync_parent(path);
    Ok(())
}

/// Creates `path` exclusively with permission bits `mode` (failing if it exists, never
/// following a planted symlink), writes `data` and flushes it; removes the file again if the
/// write fails.
fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    drop(file);
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// `data` in a new file beside `path` (`.<name>.<pid>-<random>.tmp`, created exclusively with
/// `mode`, so neither a stale file nor a planted symlink lends it a mode or a target, and two
/// writers never share one), flushed to disk. Removed again on any failure.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, KeyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{name}.{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    write_new(&tmp, data, mode).map_err(|e| KeyError::Io(tmp.clone(), e))?;
    Ok(tmp)
}

/// Flushes `path`'s dir, so a new name in it survives a crash (best effort: a dir that cannot
/// be opened or flushed costs durability of the name, not the write).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

/// Key material a first start made in memory (a master key, the CA, its certificate), not
/// yet on disk: `veil run` writes it ([`Unsaved::save`]) only once its listeners are bound
/// and it holds its data dir, so a start that fails (a port in use, a second veil on the same
/// dir) leaves no key behind for a later start to pick up. Each file is created, never
/// replaced ([`create_file`]), in the order added. `Debug` shows the paths only.
#[derive(Default)]
pub struct Unsaved {
    files: Vec<(PathBuf, Zeroizing<Vec<u8>>, u32, &'static str)>,
}

impl fmt::Debug for Unsaved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.files.iter().map(|(p, ..)| p))
            .finish()
    }
}

impl Unsaved {
    /// Permission bits of a secret file.
    pub const SECRET: u32 = 0o600;
    /// Permission bits of a public file (a CA certificate apps must read).
    pub const PUBLIC: u32 = 0o644;

    /// Adds `data` for `path` with permission bits `mode`; `what` names it in the log line
    /// ("created master key").
    pub fn add(&mut self, path: PathBuf, data: &[u8], mode: u32, what: &'static str) {
        self.files
            .push((path, Zeroizing::new(data.to_vec()), mode, what));
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The paths waiting to be written, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, ..)| p.as_path())
    }

    /// Creates every file, in order, logging each. Stops at the first failure:
    /// [`KeyError::Appeared`] when one exists by now (what was written before it stays, and
    /// the next start loads it), [`KeyError::Io`] otherwise.
    pub fn save(self) -> Result<(), KeyError> {
        for (path, data, mode, what) in self.files {
            create_file(&path, &data, mode)?;
            tracing::info!(path = %path.display(), "created {what}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn purposes_derive_distinct_keys() {
        let key = MasterKey::from_bytes(KeyId(1), [7; 32]);
        let all = [
            Purpose::Pseudonym,
            Purpose::ContentHash,
            Purpose::Fingerprint,
            Purpose::FieldEncryption,
            Purpose::SealWrap,
        ];
        let derived: Vec<[u8; 32]> = all.iter().map(|p| *key.derive(*p).bytes()).collect();
        for i in 0..derived.len() {
            for j in i + 1..derived.len() {
                assert_ne!(derived[i], derived[j]);
            }
        }
        assert!(!format!("{key:?}").contains("07"));
    }

    #[test]
    fn create_save_load_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(MASTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = *ring.current().derive(Purpose::Pseudonym).bytes();

        let mut again = Keyring::load_or_create(dir.path()).unwrap();
        assert_eq!(*again.current().derive(Purpose::Pseudonym).bytes(), first);

        let id = again.rotate();
        again.save(dir.path()).unwrap();
        let loaded = Keyring::load(dir.path()).unwrap();
        assert_eq!(loaded.current().id(), id);
        assert_eq!(loaded.identity().id(), KeyId(1));
        assert_eq!(*loaded.identity().derive(Purpose::Pseudonym).bytes(), first);
    }

    #[test]
    fn a_generated_key_is_written_only_when_saved_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut unsaved = Unsaved::default();
        let ring = Keyring::load_or_generate(dir.path(), &mut unsaved).unwrap();
        assert!(
            !dir.path().join(MASTER_FILE).exists(),
            "written before save"
        );
        assert_eq!(
            unsaved.paths().collect::<Vec<_>>(),
            [dir.path().join(MASTER_FILE)]
        );
        assert!(!format!("{unsaved:?}").contains(&format!("{:02x}", ring.current().secret[0])));
        unsaved.save().unwrap();
        let loaded = Keyring::load(dir.path()).unwrap();
        assert_eq!(
            loaded.identity().derive(Purpose::Pseudonym).bytes(),
            ring.identity().derive(Purpose::Pseudonym).bytes()
        );
        let mode = fs::metadata(dir.path().join(MASTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A second first start's key, made before the file existed, is refused, not written.
        let mut late = Unsaved::default();
        late.add(
            dir.path().join(MASTER_FILE),
            b"k1:00",
            Unsaved::SECRET,
            "master key",
        );
        let err = late.save().unwrap_err();
        assert!(
            matches!(&err, KeyError::Appeared(p) if p.ends_with(MASTER_FILE)),
            "{err}"
        );
        assert!(err.to_string().contains("start again"), "{err}");
        assert!(Keyring::load(dir.path()).is_ok(), "the first key is intact");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [MASTER_FILE], "no temp file left");
    }

    #[test]
    fn a_key_file_linked_to_nothing_is_named_as_such_not_as_another_process() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("absent/master.keys"),
            dir.path().join(MASTER_FILE),
        )
        .unwrap();
        let err = Keyring::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("symbolic link") && !err.contains("another process"),
            "{err}"
        );
        // The CA's key likewise: an error, not a retry without end.
        std::os::unix::fs::symlink(dir.path().join("absent/ca.key"), dir.path().join("ca.key"))
            .unwrap();
        let err = crate::proxy::CertificateAuthority::load_or_create(
            dir.path(),
            crate::proxy::CaScope::ANY,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn first_starts_racing_on_one_keys_dir_all_end_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Barrier::new(8);
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let ring = Keyring::load_or_create(dir.path()).unwrap();
                        *ring.identity().derive(Purpose::Pseudonym).bytes()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = *Keyring::load(dir.path())
            .unwrap()
            .identity()
            .derive(Purpose::Pseudonym)
            .bytes();
        assert!(keys.iter().all(|k| *k == on_disk), "a key was replaced");
    }

    // Moved from seal::tests (`raw_user_ids_are_refused`): `SealStore::submit` takes a
    // `UserPseudonym` now, so the refusal lives in the one checked parse from text.
    #[test]
    fn raw_user_ids_are_refused() {
        assert_eq!(
            UserPseudonym::parse("alice@example.com"),
            Err(NotAPseudonym)
        );
        for bad in [
            "",
            "u_",
            "u_0123456789ABCDEF",
            "u_0123456789abcde",
            "x_0123456789abcdef",
        ] {
            assert_eq!(UserPseudonym::parse(bad), Err(NotAPseudonym), "{bad:?}");
        }
        let ring = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
        let p = pseudonymize_user(&ring, "alice@example.com");
        assert_eq!(UserPseudonym::parse(p.as_str()), Ok(p.clone()));
        assert_eq!(p.as_str().parse::<UserPseudonym>(), Ok(p));
    }

    #[test]
    fn temp_files_of_stopped_runs_are_removed_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that ran and is gone: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let names = [
            (format!(".master.keys.{dead}-0123456789abcdef.tmp"), false),
            (format!(".ca.key.{dead}-fedcba9876543210.tmp"), false),
            // Our own pid: an earlier run's, restarted with the same pid.
            (format!(".master.keys.{mine}-0123456789abcdef.tmp"), false),
            (format!(".master.keys.{parent}-0123456789abcdef.tmp"), true),
            // Not of write_temp's shape: never touched.
            (format!(".master.keys.{dead}-0123.tmp"), true),
            (format!("master.keys.{dead}-0123456789abcdef.tmp"), true),
            (format!(".master.keys.{dead}-0123456789ABCDEF.tmp"), true),
            (format!("..{dead}-0123456789abcdef.tmp"), true),
            ("master.keys".to_string(), true),
        ];
        let written_before = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for (name, _) in &names {
            let file = fs::File::create(dir.path().join(name)).unwrap();
            file.set_modified(written_before).unwrap();
        }
        // Of a process that is gone, but just written: maybe another pid namespace's.
        let fresh = format!(".master.keys.{dead}-1111111111111111.tmp");
        fs::write(dir.path().join(&fresh), b"x").unwrap();
        let fresh_mine = format!(".ca.key.{mine}-1111111111111111.tmp");
        fs::write(dir.path().join(&fresh_mine), b"x").unwrap();
        // A dir of that shape is not a temp file.
        let subdir = format!(".admin.token.{dead}-00000000000000aa.tmp");
        fs::create_dir(dir.path().join(&subdir)).unwrap();
        prepare_keys_dir(dir.path()).unwrap();
        for (name, kept) in &names {
            assert_eq!(dir.path().join(name).exists(), *kept, "{name}");
        }
        assert!(dir.path().join(subdir).is_dir());
        assert!(dir.path().join(fresh).exists());
        assert!(dir.path().join(fresh_mine).exists());
        assert_eq!(temp_owner(".x.12-0123456789abcdef.tmp"), Some(12));
        assert_eq!(temp_owner(".x.99999999999-0123456789abcdef.tmp"), None);
    }

    #[test]
    fn pseudonyms_are_keyed_stable_and_shaped() {
        let mut ring = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
        let p = pseudonymize_user(&ring, "alice@example.com");
        assert!(is_user_pseudonym(p.as_str()), "{p}");
        assert!(!p.as_str().contains("alice"));
        let expected = blake3::keyed_hash(
            ring.identity().derive(Purpose::Pseudonym).bytes(),
            b"user\0alice@example.com",
        );
        assert_eq!(&p.as_str()[2..], &expected.to_hex()[..16]);
        assert_ne!(p, pseudonymize_user(&ring, "bob@example.com"));
        ring.rotate();
        assert_eq!(p, pseudonymize_user(&ring, "alice@example.com"));
        let other = Keyring::single(MasterKey::from_bytes(KeyId(1), [8; 32]));
        assert_ne!(p, pseudonymize_user(&other, "alice@example.com"));
        assert!(!is_user_pseudonym("alice"));
        assert!(!is_user_pseudonym("u_0123456789ABCDEF"));
    }

    #[test]
    fn rules_engine_and_store_agree_on_user_pseudonyms() {
        // forget --user pseudonymizes with keys::pseudonymize_user; records get theirs from
        // the rules engine. A mismatch would make deletion requests miss records.
        let ring = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
        let rules = crate::redact::CompiledRules::from_str("version = 1\n", &ring).unwrap();
        for user in ["alice@example.com", "42", "Bob"] {
            assert_eq!(
                rules.pseudonymize_user(user),
                pseudonymize_user(&ring, user)
            );
        }
    }

    // See: veil#10
    #[test]
    fn keys_dir_0755() {
        // The keys dir (and missing parents) is created 0700; an existing 0755 one is flagged.
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("deploy/keys");
        prepare_keys_dir(&keys).unwrap();
        for dir in [&keys, &root.path().join("deploy")] {
            let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        assert_eq!(loose_mode(&keys), None);
        // Secrets written into a missing dir create it 0700 too.
        let other = root.path().join("other/keys");
        Keyring::load_or_create(&other).unwrap();
        assert_eq!(loose_mode(&other), None);

        fs::set_permissions(&keys, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_keys_dir(&keys).unwrap();
        assert_eq!(loose_mode(&keys), Some(0o755), "left as found, and flagged");
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o710)).unwrap();
        assert_eq!(loose_mode(&keys), Some(0o710));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(Keyring::parse(""), Err(KeyError::Invalid(_))));
        assert!(matches!(
            Keyring::parse("k1:abcd"),
            Err(KeyError::Invalid(_))
        ));
        let hex = "ab".repeat(32);
        assert!(Keyring::parse(&hex).is_ok());
        assert!(Keyring::parse(&format!("k1:{hex}\nk1:{hex}")).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Keyring::load(dir.path()),
            Err(KeyError::Missing(_))
        ));
    }
}
