//! The per-value test of a checked column (`convert = "checked"`).

/// What a value of a checked column must satisfy to arrive unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    pub rule: FitRule,
    /// The target type, as a person writes it (for messages).
    pub target: String,
}

/// The test of [`Fit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitRule {
    /// An integer within the target integer type's range.
    Range { min: i64, max: i64 },
    /// At most this many characters. PostgreSQL itself would refuse longer text only where
    /// the excess is not all spaces, and silently strip those: the check refuses both.
    Length(i32),
    /// An absolute value below `10^digits` (a numeric whose scale the target holds).
    Digits(i32),
}

impl Fit {
    /// The SQL condition that `value` (an expression of the source type) fits; NULL fits.
    pub fn sql(&self, value: &str) -> String {
        match self.rule {
            FitRule::Range { min, max } => {
                format!("coalesce(({value}) between {min} and {max}, true)")
            }
            FitRule::Length(n) => format!("coalesce(char_length({value}) <= {n}, true)"),
            FitRule::Digits(d) => format!("coalesce(abs({value}) < 1e{d}, true)"),
        }
    }
}
