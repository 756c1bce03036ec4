//! The one error type of this crate, with a stable reason per variant.

use std::fmt;

/// How many characters of the expression an error message quotes.
const QUOTED_CHARS: usize = 64;

/// A place in the expression's source: 1-based line, and 1-based column
/// counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: u32,
    /// The column in characters, from 1.
    pub column: u32,
}

impl Position {
    /// The position of the character that starts at `offset` bytes into
    /// `source`, if `offset` is inside it (or just past its end) and on a
    /// character boundary.
    pub(crate) fn at_byte(source: &str, offset: usize) -> Option<Position> {
        let before = source.get(..offset)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        Some(Position {
            line: u32::try_from(line).ok()?,
            column: u32::try_from(column).ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why an expression could not be compiled or evaluated.
///
/// Each variant has a stable [`reason`](CelError::reason), meant for the
/// `reason` of a Kubernetes status condition; the `Display` message quotes
/// the expression (truncated when long) and names the position where one is
/// known, for the condition's `message`.
///
/// The `expression` field of every variant is that quoted excerpt: at most
/// 64 characters of the source, with `…` when it was cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CelError {
    /// The source is longer than [`Limits::max_source_bytes`](crate::Limits::max_source_bytes).
    #[error("expression too large in {expression:?}: {len} bytes, the limit is {limit}")]
    ExpressionTooLarge {
        /// The quoted excerpt of the expression.
        expression: String,
        /// The length of the source in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// The expression nests deeper than [`Limits::max_nesting`](crate::Limits::max_nesting),
    /// found before parsing, or its syntax tree is deeper than the crate allows.
    #[error("expression too deep{} in {expression:?}: nesting depth exceeds the limit of {limit}", at(.position))]
    ExpressionTooDeep {
        /// The quoted excerpt of the expression.
        expression: String,
        /// Where the limit was first exceeded.
        position: Option<Position>,
        /// The limit that was exceeded.
        limit: usize,
    },

    /// The parser rejected the expression.
    #[error("syntax error{} in {expression:?}: {message}", at(.position))]
    SyntaxError {
        /// The quoted excerpt of the expression.
        expression: String,
        /// Where the first error is.
        position: Option<Position>,
        /// The parser's message for the first error, with a count of any others.
        message: String,
    },

    /// The expression names a variable that is neither declared nor bound by
    /// a macro such as `exists`.
    #[error("undeclared reference to '{name}'{} in {expression:?}", at(.position))]
    UndeclaredReference {
        /// The quoted excerpt of the expression.
        expression: String,
        /// Where the name is used.
        position: Option<Position>,
        /// The undeclared name.
        name: String,
    },

    /// The expression calls a function or method the runtime doesn't have.
    #[error("unknown function '{name}'{}{} in {expression:?}", if *.method { " called as a method" } else { "" }, at(.position))]
    UnknownFunction {
        /// The quoted excerpt of the expression.
        expression: String,
        /// Where the call is.
        position: Option<Position>,
        /// The function's name.
        name: String,
        /// Whether it was called as a method, `x.name(..)`.
        method: bool,
    },

    /// The estimated cost of evaluating the expression against the given
    /// input exceeds [`Limits::cost_budget`](crate::Limits::cost_budget); it
    /// was not evaluated.
    #[error("estimated cost {cost} exceeds the budget of {budget} in {expression:?}")]
    CostLimitExceeded {
        /// The quoted excerpt of the expression.
        expression: String,
        /// The estimated cost.
        cost: u64,
        /// The budget.
        budget: u64,
    },

    /// Evaluation failed: a runtime error such as a division by zero, a
    /// missing field or an integer overflow, or a result JSON can't hold.
    #[error("evaluation error in {expression:?}: {message}")]
    EvaluationError {
        /// The quoted excerpt of the expression.
        expression: String,
        /// What went wrong.
        message: String,
    },

    /// [`Expression::evaluate_bool`](crate::Expression::evaluate_bool) got a
    /// result that is not a bool.
    #[error("expression must evaluate to a bool, got {got} in {expression:?}")]
    NotABool {
        /// The quoted excerpt of the expression.
        expression: String,
        /// The CEL type of the result, such as `int`.
        got: String,
    },

    /// A bound input value is larger or deeper than the limits allow.
    #[error("input too large for {expression:?}: variable '{variable}' {what}")]
    InputTooLarge {
        /// The quoted excerpt of the expression.
        expression: String,
        /// The variable the value was bound to.
        variable: String,
        /// Which limit, e.g. `is 5000000 bytes, the limit is 3145728`.
        what: String,
    },

    /// A declared variable name is not a CEL identifier, or the bindings
    /// given to an evaluation don't match the declared variables.
    #[error("invalid variable '{name}' for {expression:?}: {message}")]
    InvalidVariable {
        /// The quoted excerpt of the expression.
        expression: String,
        /// The variable's name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
}

impl CelError {
    /// A stable, CamelCase reason for a Kubernetes condition, e.g.
    /// `"SyntaxError"`.
    pub fn reason(&self) -> &'static str {
        match self {
            CelError::ExpressionTooLarge { .. } => "ExpressionTooLarge",
            CelError::ExpressionTooDeep { .. } => "ExpressionTooDeep",
            CelError::SyntaxError { .. } => "SyntaxError",
            CelError::UndeclaredReference { .. } => "UndeclaredReference",
            CelError::UnknownFunction { .. } => "UnknownFunction",
            CelError::CostLimitExceeded { .. } => "CostLimitExceeded",
            CelError::EvaluationError { .. } => "EvaluationError",
            CelError::NotABool { .. } => "NotABool",
            CelError::InputTooLarge { .. } => "InputTooLarge",
            CelError::InvalidVariable { .. } => "InvalidVariable",
        }
    }
}

/// ` at L:C` when the position is known.
fn at(position: &Option<Position>) -> String {
    position.map(|p| format!(" at {p}")).unwrap_or_default()
}

/// The excerpt of `source` that messages quote.
pub(crate) fn excerpt(source: &str) -> String {
    match source.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &source[..cut]),
        None => source.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let source = "a &&\n  'é' + b";
        assert_eq!(Position::at_byte(source, 0), Some(Position { line: 1, column: 1 }));
        let b = source.find('b').expect("has b");
        assert_eq!(Position::at_byte(source, b), Some(Position { line: 2, column: 9 }));
        // inside the two bytes of 'é'
        let e = source.find('é').expect("has é");
        assert_eq!(Position::at_byte(source, e + 1), None);
        assert_eq!(Position::at_byte(source, source.len() + 1), None);
    }

    #[test]
    fn long_expressions_are_cut_on_a_character_boundary() {
        let short = "a == b";
        assert_eq!(excerpt(short), short);
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), QUOTED_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn messages_quote_the_expression_and_the_position() {
        let error = CelError::SyntaxError {
            expression: excerpt("a.b =="),
            position: Some(Position { line: 1, column: 7 }),
            message: "mismatched input '<EOF>'".into(),
        };
        assert_eq!(
            error.to_string(),
            "syntax error at 1:7 in \"a.b ==\": mismatched input '<EOF>'"
        );
        assert_eq!(error.reason(), "SyntaxError");
    }
}
