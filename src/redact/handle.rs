//! The compiled rules in force, swappable while traffic flows.
//!
//! Part of the redact step. [`RulesHandle`] holds one `Arc<CompiledRules>` behind a lock;
//! the pipeline's threads take the current one per exchange ([`RulesHandle::current`]) and
//! SIGHUP swaps in a freshly compiled file ([`RulesHandle::reload`]). A file that fails to
//! compile leaves the old rules in force. This file owns the swap and nothing else: it never
//! touches threads, queues or records.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::{CompiledRules, RulesError};
use crate::keys::Keyring;

/// The shipped default profile (`rules/default.toml`).
pub const BUILTIN_DEFAULT_RULES: &str = include_str!("../../rules/default.toml");

/// The compiled rules in force, swappable at run time.
#[derive(Debug)]
pub struct RulesHandle {
    path: PathBuf,
    current: RwLock<Arc<CompiledRules>>,
    /// The redaction memo's bound, given to every compile ([`RulesHandle::with_memo_bytes`]).
    memo_bytes: usize,
}

impl RulesHandle {
    /// Loads and compiles `path`. A bad file is an error naming file, line and column.
    pub fn load(path: PathBuf, keys: &Keyring) -> Result<Self, RulesError> {
        let rules = CompiledRules::load(&path, keys)?;
        Ok(Self::from_rules(path, rules))
    }

    /// The shipped `rules/default.toml`, compiled into the binary: used when `veil run` starts
    /// outside a checkout and no `--rules` was given. Reload re-reads `path` if it appears.
    pub fn builtin_default(path: PathBuf, keys: &Keyring) -> Result<Self, RulesError> {
        let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, keys)?;
        Ok(Self::from_rules(path, rules))
    }

    /// Wraps already compiled rules (tests, tools).
    pub fn from_rules(path: PathBuf, rules: CompiledRules) -> Self {
        RulesHandle {
            memo_bytes: rules.memo_bytes(),
            path,
            current: RwLock::new(Arc::new(rules)),
        }
    }

    /// Bounds the redaction memo of the rules in force and of every reload at `bytes`
    /// (`redaction_memo` in veil.toml; 0 turns it off). Call it before [`RulesHandle::current`]:
    /// rules already handed out keep their memo.
    pub fn with_memo_bytes(mut self, bytes: usize) -> Self {
        self.memo_bytes = bytes;
        let current = self.current.get_mut().unwrap_or_else(|e| e.into_inner());
        // Unshared until the handle is: `current()` is what shares the rules.
        if let Some(rules) = Arc::get_mut(current) {
            rules.set_memo_bytes(bytes);
        }
        self
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<CompiledRules> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recompiles the rules file. On success the new rules apply to every exchange processed
    /// from now on and their digest is returned; on failure the old rules stay in force and the
    /// error (file:line:col) is returned for logging.
    pub fn reload(&self, keys: &Keyring) -> Result<String, RulesError> {
        let mut rules = CompiledRules::load(&self.path, keys)?;
        rules.set_memo_bytes(self.memo_bytes);
        let digest = rules.digest().to_string();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(digest)
    }
}
