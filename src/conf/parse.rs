//! TOML text to a checked `Config` (stub: filled in by the conf work).
use super::Config;
use std::fmt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ConfError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfErrors(pub Vec<ConfError>);

impl fmt::Display for ConfErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{}:{}:{}: {}", e.file, e.line, e.col, e.msg)?;
        }
        Ok(())
    }
}

pub fn load(path: &Path) -> Result<Config, ConfErrors> {
    let _ = path;
    unimplemented!("conf::load")
}

pub fn parse(file: &str, text: &str) -> Result<Config, ConfErrors> {
    let _ = (file, text);
    unimplemented!("conf::parse")
}
