//! The limits that keep compiling and evaluating hostile expressions and
//! input bounded.

/// Bounds on what an [`Expression`](crate::Expression) accepts, in the spirit
/// of the limits Kubernetes puts on CEL in CRD validation rules.
///
/// | limit | default | checked |
/// |---|---|---|
/// | [`max_source_bytes`](Limits::max_source_bytes) | 10 KiB | at compile, before parsing |
/// | [`max_nesting`](Limits::max_nesting) | 32 | at compile, before parsing |
/// | [`cost_budget`](Limits::cost_budget) | 1,000,000 | at each evaluation, before evaluating |
/// | [`max_input_bytes`](Limits::max_input_bytes) | 3 MiB per variable | at each evaluation |
/// | [`max_input_depth`](Limits::max_input_depth) | 64 per variable | at each evaluation |
///
/// ```
/// use cel_conditions::{Expression, Limits};
///
/// let limits = Limits { cost_budget: 10_000, ..Limits::default() };
/// let expr = Expression::compile_with_limits("x.all(i, i > 0)", &["x"], limits).unwrap();
/// assert_eq!(expr.limits().cost_budget, 10_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest source accepted, in bytes.
    pub max_source_bytes: usize,
    /// How deep the expression may nest: each open parenthesis, bracket or
    /// brace counts one level, and so does each operator, field selection or
    /// method call chained inside one (`a.b.c + d` is 3 deep). `&&`, `||`
    /// and `,` separate terms that don't add up. Values above 64 are taken as
    /// 64: the parser's own recursion needs a bounded stack.
    pub max_nesting: usize,
    /// The most an evaluation may cost, estimated from the expression and the
    /// actual input before evaluating; see the crate documentation for the
    /// unit.
    pub cost_budget: u64,
    /// The largest value bound to one variable, measured as the length of its
    /// compact JSON text (counting 8 bytes for every number, and strings
    /// without their escapes).
    pub max_input_bytes: usize,
    /// The deepest value bound to one variable: a scalar is 1 deep, `[1]` is 2.
    pub max_input_depth: usize,
}

/// The highest nesting accepted whatever the limits say.
pub(crate) const NESTING_CEILING: usize = 64;

impl Limits {
    /// The nesting limit actually applied.
    pub(crate) fn nesting(&self) -> usize {
        self.max_nesting.min(NESTING_CEILING)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: 10 * 1024,
            max_nesting: 32,
            cost_budget: 1_000_000,
            max_input_bytes: 3 * 1024 * 1024,
            max_input_depth: 64,
        }
    }
}
