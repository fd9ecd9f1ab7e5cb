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
}

impl RulesHandle {
    /// Loads and compiles `path`. A bad file is an error naming file, line and column.
    pub fn load(path: PathBuf, keys: &Keyring) -> Result<Self, RulesError> {
        let rules = CompiledRules::load(&path, keys)?;
        Ok(RulesHandle {
            path,
            current: RwLock::new(Arc::new(rules)),
        })
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
            path,
            current: RwLock::new(Arc::new(rules)),
        }
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
        let rules = CompiledRules::load(&self.path, keys)?;
        let digest = rules.digest().to_string();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(digest)
    }
}
