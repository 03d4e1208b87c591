//! The one error type of settings validation: a flag, its environment
//! variable, what is wrong and how to fix it.

/// A setting that cannot be used, with the flag it came from and how to fix it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("--{flag} ({env}): {problem}. Fix: {fix}")]
pub struct ConfigError {
    /// The flag without its dashes, e.g. `inbound-ports`.
    pub flag: &'static str,
    /// The environment variable the flag also reads.
    pub env: &'static str,
    /// What is wrong with the value.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl ConfigError {
    /// An error for `flag` (`env`).
    pub fn new(
        flag: &'static str,
        env: &'static str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            flag,
            env,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
