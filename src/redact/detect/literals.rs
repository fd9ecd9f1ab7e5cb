//! The literal pass: secrets found where their fixed prefix occurs.
//!
//! Part of the redact step's detectors (`detect/`). One Aho-Corasick pass finds every prefix
//! (`sk-`, `ghp_`, `eyJ`, `-----BEGIN`, ...) and only the patterns owning it are tried there,
//! anchored; a PEM block's END line is found by substring search with a memo. Owns
//! [`build_literals`], [`Scanner::find_literals`] and the footer search; never runs a regex
//! over the whole text.

use super::*;

/// The literal-gated patterns: one Aho-Corasick pass finds every literal; the patterns that
/// start with it are tried there, anchored.
#[derive(Debug)]
pub(super) struct Literals {
    pub(super) ac: AhoCorasick,
    /// For each literal: `(pattern index, back)` to try where it occurs.
    pub(super) owners: Vec<Vec<(usize, usize)>>,
}

/// Builds the literal pass. A literal that extends a shorter one (`sk-ant-` after `sk-`) is
/// folded into it: leftmost-first search reports one literal per position, so both detectors
/// must hang off the one that is found.
pub(super) fn build_literals(spec: &ScannerSpec) -> Result<Option<Literals>, ScanBuildError> {
    let mut pairs: Vec<(&'static str, usize, usize)> = Vec::new();
    for (i, p) in spec.patterns.iter().enumerate() {
        if let Gate::Literal(words, back) = p.gate {
            pairs.extend(words.iter().map(|w| (*w, i, back)));
        }
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = {
        // First-seen order, i.e. detector priority: Teddy assigns buckets by pattern index,
        // and this order measured 3x faster than sorted (fewer false candidates).
        let mut w: Vec<&str> = Vec::new();
        for (lit, ..) in &pairs {
            if !w.contains(lit) {
                w.push(lit);
            }
        }
        // Keep only literals no other literal is a proper prefix of.
        w.iter()
            .copied()
            .filter(|x| !w.iter().any(|y| y.len() < x.len() && x.starts_with(y)))
            .collect()
    };
    let mut owners: Vec<Vec<(usize, usize)>> = vec![Vec::new(); words.len()];
    for (lit, pattern, back) in pairs {
        let at = words
            .iter()
            .position(|w| lit.starts_with(w))
            .expect("every literal has a kept prefix");
        if !owners[at].contains(&(pattern, back)) {
            owners[at].push((pattern, back));
        }
    }
    // Case-sensitive on purpose: it keeps the SIMD (Teddy) searcher, 3x faster than
    // ASCII-case-insensitive search here. Literals list the casings that occur.
    // Leftmost-first (not standard) semantics: only those use the packed Teddy searcher.
    let ac = AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(&words)
        .map_err(|e| ScanBuildError::Set(e.to_string()))?;
    Ok(Some(Literals { ac, owners }))
}

impl Scanner {
    /// The literal pass: one Aho-Corasick search finds every occurrence of every literal
    /// (overlapping ones too: it resumes one byte after each hit), and the patterns owning
    /// that literal are tried there, anchored, and up to `back` bytes before it. No regex runs
    /// over the text. After a candidate, a pattern is not tried again before where
    /// [`Scanner::locate`] would resume ([`resume_at`]), so the gated scan meets exactly the
    /// candidates of an exhaustive `locate` over the whole text.
    ///
    /// Cost stays linear because an anchored attempt that fails is short: a token pattern
    /// (prefix, then a run of its alphabet) fails only when the run is shorter than its
    /// minimum, a label pattern within its bounded label. The exception is a pattern whose
    /// attempt can run on before failing: a JWT whose header never meets its `.`. Such a
    /// pattern names its leading run ([`Pat::lead`]); a failure there means every start later
    /// in the same run fails too (the same run, then the same text after it), so the pass
    /// skips the run instead of rescanning it from every `eyJ` inside (veil#10).
    pub(super) fn find_literals(
        &self,
        lits: &Literals,
        text: &str,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        // Per pattern: where it may start again.
        let mut resume: Vec<usize> = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let span = aho_corasick::Input::new(text).span(pos..text.len());
            let Some(m) = lits.ac.find(span) else {
                cx.meter.work(text.len() - pos)?;
                break;
            };
            cx.meter.work(m.start() + 1 - pos)?;
            if resume.is_empty() {
                resume.resize(self.patterns.len(), 0);
            }
            for &(pi, back) in &lits.owners[m.pattern().as_usize()] {
                let p = &self.patterns[pi];
                for x in m.start().saturating_sub(back)..=m.start() {
                    if x < resume[pi] || !text.is_char_boundary(x) {
                        continue;
                    }
                    let input = Input::new(text).range(x..).anchored(Anchored::Yes);
                    match self.candidate(p, text, &input, cx)? {
                        Some((whole, r)) => {
                            let accepted = self.accept(p, text, r, out, cx)?;
                            resume[pi] = resume_at(text, p, &whole, accepted);
                        }
                        None => match p.lead {
                            Some(lead) => {
                                let run = text.as_bytes()[x..].iter().take_while(|&&b| lead(b));
                                let end = x + run.count();
                                cx.meter.work(end - x + 1)?;
                                resume[pi] = end.max(x + 1);
                            }
                            None => cx.meter.work(m.len())?,
                        },
                    }
                }
            }
            pos = m.start() + 1;
        }
        Ok(())
    }
}

/// What the footer search learnt, valid for later queries that start inside it (queries come
/// in increasing order, so each byte is looked at about once per scan).
#[derive(Debug, Default)]
pub(super) struct FooterMemo {
    /// `(from, dead)`: the first byte at or after `from` that a body cannot hold is `dead`.
    pub(super) dead: Option<(usize, usize)>,
    /// `(from, footer)`: the first footer (start, end) at or after `from`.
    pub(super) next: Option<(usize, Option<(usize, usize)>)>,
}

/// The end of the first footer after `from` that is reachable through body bytes only.
pub(super) fn footer_end(
    f: &Footer,
    re: &meta::Regex,
    text: &str,
    from: usize,
    cx: &mut Ctx<'_>,
) -> Result<Option<usize>, Exceeded> {
    let memo = &mut cx.footer;
    let dead = match memo.dead {
        Some((a, d)) if a <= from && from <= d => d,
        _ => {
            let d = text.as_bytes()[from..]
                .iter()
                .position(|&b| !(f.body)(b))
                .map_or(text.len(), |i| from + i);
            cx.meter.work(d - from + 1)?;
            memo.dead = Some((from, d));
            d
        }
    };
    let next = match memo.next {
        Some((a, n)) if a <= from && n.is_none_or(|(s, _)| from <= s) => n,
        _ => {
            let mut at = from;
            let mut found = None;
            while let Some(i) = text[at..].find(f.lit) {
                let s = at + i;
                cx.meter.work(i + f.lit.len())?;
                if let Some(m) = re.search(&Input::new(text).range(s..).anchored(Anchored::Yes)) {
                    cx.meter.work(m.len())?;
                    found = Some((s, m.end()));
                    break;
                }
                at = s + 1;
            }
            if found.is_none() {
                cx.meter.work(text.len() - at + 1)?;
            }
            memo.next = Some((from, found));
            found
        }
    };
    // The footer's own bytes are body bytes, so a footer starting before `dead` ends by it.
    Ok(next.filter(|(s, _)| *s < dead).map(|(_, e)| e))
}
