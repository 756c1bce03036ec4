//! Compiles, checks and evaluates CEL (Common Expression Language)
//! conditions against JSON data, safely enough for expressions written by
//! users.
//!
//! ```
//! use cel_conditions::Expression;
//! use serde_json::json;
//!
//! let expr = Expression::compile(
//!     "downsyncClause.resource == 'deployments'",
//!     &["downsyncClause"],
//! )
//! .unwrap();
//! let clause = json!({"group": "apps", "resource": "deployments", "name": "nginx"});
//! assert!(expr.evaluate_bool(&[("downsyncClause", &clause)]).unwrap());
//! ```
//!
//! An [`Expression`] is compiled once and evaluated many times; it is cheap
//! to clone and can be shared between threads.
//!
//! # Checks
//!
//! Compiling parses the expression with the standard CEL library and its
//! macros (`has`, `all`, `exists`, `exists_one`, `map`, `filter`), then
//! rejects every name that is neither a declared variable, a variable bound
//! by a macro, nor a type name (`int`, `string`, ...), and every function
//! the runtime doesn't have. Types are checked at run time only.
//!
//! # Limits
//!
//! Every [`Limits`] is enforced before the work it bounds: the source's size
//! and nesting before parsing, so that neither a huge nor a deeply nested
//! input reaches the recursive parser; the input's size and depth, and the
//! estimated cost, before evaluating. The cost estimate is conservative: it
//! takes the worst case of every branch and never counts on `exists` or `&&`
//! stopping early. See [`Expression::estimate_cost`] for what it covers.
//!
//! Parsing and evaluation run on a stack of their own, large enough for the
//! deepest expression the limits let through, and a panic in the `cel`
//! crate becomes a [`CelError::SyntaxError`] or [`CelError::EvaluationError`]
//! rather than unwinding into the caller.
//!
//! # Results
//!
//! [`Expression::evaluate`] returns JSON: CEL's `int`, `uint` and finite
//! `double` are numbers, `bytes` are base64 strings, timestamps RFC 3339
//! strings and durations integer nanoseconds. A result JSON can't hold, such
//! as a type or NaN, is an evaluation error. Input numbers that fit in an
//! `int` are `int`s, larger ones `uint`s, any other `double`s.

mod check;
mod cost;
mod error;
mod input;
mod limits;
mod nesting;
mod shared;

pub use error::{CelError, Position};
pub use limits::Limits;
pub use shared::SharedExpressions;

use cel::objects::ValueType;
use cel::{Context, Env, ParseErrors, Program, Value};
use error::excerpt;
use serde_json::Value as Json;
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};

/// The environment every expression is compiled and evaluated in: the CEL
/// standard library.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// The stack parsing runs on. The parser recurses through about ten grammar
/// rules per nesting level, with large frames in unoptimised builds: this
/// holds [`limits::NESTING_CEILING`] levels with room to spare.
const PARSE_STACK: usize = 64 << 20;

/// The stack evaluation runs on when the caller's has too little left: it
/// holds a syntax tree [`check::MAX_TREE_DEPTH`] deep, and input
/// [`INPUT_DEPTH_CEILING`] deep.
const EVAL_STACK: usize = 32 << 20;

/// The stack evaluation needs: a base, and about 40 KiB per level of the
/// syntax tree in unoptimised builds, much less in optimised ones, plus a
/// little per level of input; with a margin. Below it, evaluation moves to a
/// stack of [`EVAL_STACK`], which costs a few microseconds.
fn eval_stack_needed(tree_depth: usize, input_depth: usize) -> usize {
    (512 << 10) + tree_depth * (64 << 10) + input_depth * (16 << 10)
}

/// The deepest input accepted whatever the limits say.
const INPUT_DEPTH_CEILING: usize = 512;

/// Words CEL reserves, which can't name a variable.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A compiled and checked CEL expression.
///
/// Cloning is cheap: clones share the compiled form.
#[derive(Debug, Clone)]
pub struct Expression {
    inner: Arc<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    source: String,
    program: Program,
    variables: Vec<String>,
    /// Which of `variables` the expression uses: only those must be bound.
    used: Vec<bool>,
    /// The depth of the syntax tree.
    tree_depth: usize,
    limits: Limits,
}

// Controllers share compiled expressions between tasks and threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Expression>();
};

impl Expression {
    /// Compiles `source` with the default [`Limits`]; `variables` are the
    /// names it may use besides those its macros bind, e.g.
    /// `["combinedStatus"]`.
    ///
    /// # Errors
    ///
    /// [`CelError::ExpressionTooLarge`], [`CelError::ExpressionTooDeep`],
    /// [`CelError::SyntaxError`], [`CelError::UndeclaredReference`],
    /// [`CelError::UnknownFunction`], and [`CelError::InvalidVariable`] for a
    /// variable name that is not a CEL identifier or is declared twice.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Expression, CelError> {
        Expression::compile_with_limits(source, variables, Limits::default())
    }

    /// Compiles `source` like [`compile`](Expression::compile), under
    /// `limits`, which also apply to its evaluations.
    ///
    /// # Errors
    ///
    /// As [`compile`](Expression::compile).
    pub fn compile_with_limits(source: &str, variables: &[&str], limits: Limits) -> Result<Expression, CelError> {
        if source.len() > limits.max_source_bytes {
            return Err(CelError::ExpressionTooLarge {
                expression: excerpt(source),
                len: source.len(),
                limit: limits.max_source_bytes,
            });
        }
        for (i, name) in variables.iter().enumerate() {
            let problem = if !is_identifier(name) {
                Some("not a CEL identifier")
            } else if RESERVED.contains(name) {
                Some("a reserved word")
            } else if variables[..i].contains(name) {
                Some("declared twice")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(CelError::InvalidVariable {
                    expression: excerpt(source),
                    name: (*name).to_owned(),
                    message: problem.to_owned(),
                });
            }
        }
        nesting::check(source, limits.nesting()).map_err(|too_deep| CelError::ExpressionTooDeep {
            expression: excerpt(source),
            position: Some(too_deep.position),
            limit: limits.nesting(),
        })?;

        let variables: Vec<String> = variables.iter().map(|v| (*v).to_owned()).collect();
        let (program, used, tree_depth) =
            guarded(PARSE_STACK, || parse_and_check(source, &variables)).unwrap_or_else(|panic| {
                Err(CelError::SyntaxError {
                    expression: excerpt(source),
                    position: None,
                    message: format!("the parser failed: {}", panic_message(&panic)),
                })
            })?;
        Ok(Expression {
            inner: Arc::new(Compiled {
                source: source.to_owned(),
                program,
                variables,
                used,
                tree_depth,
                limits,
            }),
        })
    }

    /// The source it was compiled from.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The variables it was compiled with.
    pub fn variables(&self) -> &[String] {
        &self.inner.variables
    }

    /// The limits it was compiled with, which also bound its evaluations.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Evaluates the expression with each variable bound to a JSON value,
    /// e.g. `&[("combinedStatus", &status)]`, and returns its result as JSON.
    ///
    /// Every variable the expression uses must be bound; declared variables
    /// it doesn't use may be left out.
    ///
    /// # Errors
    ///
    /// [`CelError::InvalidVariable`] when a binding names no declared
    /// variable, is given twice, or a used variable is missing;
    /// [`CelError::InputTooLarge`]; [`CelError::CostLimitExceeded`], in which
    /// case nothing was evaluated; [`CelError::EvaluationError`].
    pub fn evaluate(&self, bindings: &[(&str, &Json)]) -> Result<Json, CelError> {
        self.run(bindings, |value| {
            result_to_json(&value).map_err(|message| self.evaluation_error(message))
        })
    }

    /// Evaluates the expression like [`evaluate`](Expression::evaluate) and
    /// requires a bool result.
    ///
    /// # Errors
    ///
    /// As [`evaluate`](Expression::evaluate), and [`CelError::NotABool`].
    pub fn evaluate_bool(&self, bindings: &[(&str, &Json)]) -> Result<bool, CelError> {
        self.run(bindings, |value| match value {
            Value::Bool(b) => Ok(b),
            other => Err(CelError::NotABool {
                expression: excerpt(self.source()),
                got: type_name(&other).to_owned(),
            }),
        })
    }

    /// The estimated cost of evaluating the expression with these bindings,
    /// which [`evaluate`](Expression::evaluate) compares with
    /// [`Limits::cost_budget`].
    ///
    /// One unit is about one node of the expression evaluated, one value
    /// copied or compared, or 16 bytes of a string scanned. The input is
    /// summarised path by path (the longest list, map and string found at
    /// `combinedStatus.results[*].rows`, say), and each node costs its
    /// operands plus its own work: comprehensions their range's length times
    /// their body, so nested ones multiply; `==`, `in` and `+` the size of
    /// their operands; string functions the length of their strings;
    /// `matches` the compilation of its pattern, per call. Lists built by
    /// `map`, `filter` and `+` carry their length into what is done with
    /// them.
    ///
    /// It does not cover the conversion of the input, bounded by
    /// [`Limits::max_input_bytes`] instead. It assumes the worst of both
    /// branches of `?:` and of every iteration, so it can be far above the
    /// work actually done.
    ///
    /// # Errors
    ///
    /// As [`evaluate`](Expression::evaluate), except for evaluation errors.
    pub fn estimate_cost(&self, bindings: &[(&str, &Json)]) -> Result<u64, CelError> {
        let bound = self.bind(bindings)?;
        guarded(bound.stack, || Ok(self.estimate(&bound.values))).unwrap_or_else(|panic| Err(self.panicked(&panic)))
    }

    /// Binds, checks the cost, evaluates, and hands the result to `finish`,
    /// all on the evaluation stack with panics caught.
    fn run<T>(
        &self,
        bindings: &[(&str, &Json)],
        finish: impl FnOnce(Value) -> Result<T, CelError>,
    ) -> Result<T, CelError> {
        let bound = self.bind(bindings)?;
        guarded(bound.stack, || {
            let cost = self.estimate(&bound.values);
            let budget = self.inner.limits.cost_budget;
            if cost > budget {
                return Err(CelError::CostLimitExceeded {
                    expression: excerpt(self.source()),
                    cost,
                    budget,
                });
            }
            let mut context = Context::with_env(Arc::clone(&ENV));
            for (name, value) in &bound.values {
                context.add_variable_as_val(*name, input::to_val(value));
            }
            let value = Value::resolve(self.inner.program.expression(), &context)
                .map_err(|error| self.evaluation_error(error.to_string()))?;
            finish(value)
        })
        .unwrap_or_else(|panic| Err(self.panicked(&panic)))
    }

    /// Matches the bindings to the variables the expression uses, and checks
    /// the input limits on them; returns them with the stack evaluating them
    /// needs.
    fn bind<'b>(&self, bindings: &[(&'b str, &'b Json)]) -> Result<Bound<'b>, CelError> {
        let invalid = |name: &str, message: &str| CelError::InvalidVariable {
            expression: excerpt(self.source()),
            name: name.to_owned(),
            message: message.to_owned(),
        };
        let limits = &self.inner.limits;
        let max_depth = limits.max_input_depth.min(INPUT_DEPTH_CEILING);
        let mut bound = Vec::new();
        let mut input_depth = 0;
        for (i, (name, value)) in bindings.iter().enumerate() {
            let Some(index) = self.inner.variables.iter().position(|v| v == name) else {
                return Err(invalid(name, "bound but not declared"));
            };
            if bindings[..i].iter().any(|(other, _)| other == name) {
                return Err(invalid(name, "bound twice"));
            }
            if self.inner.used[index] {
                // The walk recurses no deeper than the depth limit.
                let depth = input::check(value, limits.max_input_bytes, max_depth).map_err(|oversize| {
                    CelError::InputTooLarge {
                        expression: excerpt(self.source()),
                        variable: (*name).to_owned(),
                        what: oversize.describe(),
                    }
                })?;
                input_depth = input_depth.max(depth);
                bound.push((*name, *value));
            }
        }
        for (variable, used) in self.inner.variables.iter().zip(&self.inner.used) {
            if *used && !bound.iter().any(|(name, _)| name == variable) {
                return Err(invalid(variable, "used by the expression but not bound"));
            }
        }
        Ok(Bound {
            values: bound,
            stack: eval_stack_needed(self.inner.tree_depth, input_depth),
        })
    }

    fn estimate(&self, bound: &[(&str, &Json)]) -> u64 {
        let summaries: Vec<cost::Summary<'_>> = bound.iter().map(|(_, value)| cost::Summary::of(value)).collect();
        let variables: Vec<(&str, &cost::Summary<'_>)> = bound
            .iter()
            .zip(&summaries)
            .map(|((name, _), summary)| (*name, summary))
            .collect();
        cost::estimate(self.inner.program.expression(), &variables)
    }

    fn evaluation_error(&self, message: String) -> CelError {
        CelError::EvaluationError {
            expression: excerpt(self.source()),
            message,
        }
    }

    fn panicked(&self, panic: &Box<dyn Any + Send>) -> CelError {
        self.evaluation_error(format!("the evaluator failed: {}", panic_message(panic)))
    }
}

/// The values bound to the variables an expression uses.
struct Bound<'b> {
    values: Vec<(&'b str, &'b Json)>,
    /// The stack evaluating with them needs.
    stack: usize,
}

/// Parses, bounds the tree's depth, and checks references; returns the
/// program, which variables it uses, and its depth.
fn parse_and_check(source: &str, variables: &[String]) -> Result<(Program, Vec<bool>, usize), CelError> {
    let program = ENV.compile(source).map_err(|errors| syntax_error(source, &errors))?;
    let (depth, deepest) = check::tree_depth(program.expression());
    if depth > check::MAX_TREE_DEPTH {
        let position = program
            .source_info()
            .offset_for(deepest)
            .and_then(|(start, _)| Position::at_byte(source, usize::try_from(start).ok()?));
        return Err(CelError::ExpressionTooDeep {
            expression: excerpt(source),
            position,
            limit: check::MAX_TREE_DEPTH,
        });
    }
    let used = {
        let mut checker = check::Checker::new(&ENV, variables, source, program.source_info());
        checker.check(program.expression())?;
        checker.used
    };
    Ok((program, used, depth))
}

/// Runs `f` with panics caught, on the caller's stack if `needed` bytes of
/// it are left, else on a new one of at least [`EVAL_STACK`] bytes.
fn guarded<T>(needed: usize, f: impl FnOnce() -> T) -> Result<T, Box<dyn Any + Send>> {
    stacker::maybe_grow(needed, needed.max(EVAL_STACK), || {
        panic::catch_unwind(AssertUnwindSafe(f))
    })
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "panicked".to_owned()
    }
}

fn syntax_error(source: &str, errors: &ParseErrors) -> CelError {
    let first = errors.errors.first();
    let position = first.and_then(|e| {
        let (line, column) = e.pos;
        Some(Position {
            line: u32::try_from(line).ok().filter(|l| *l > 0)?,
            column: u32::try_from(column).ok().filter(|c| *c > 0)?,
        })
    });
    let mut message = match first {
        Some(e) => {
            let msg = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg).to_owned();
            match &e.source {
                Some(cause) => format!("{msg}: {cause}"),
                None => msg,
            }
        }
        None => "invalid expression".to_owned(),
    };
    if errors.errors.len() > 1 {
        message.push_str(&format!(" (and {} more)", errors.errors.len() - 1));
    }
    CelError::SyntaxError {
        expression: excerpt(source),
        position,
        message,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The CEL name of a value's type.
fn type_name(value: &Value) -> &'static str {
    match value.type_of() {
        ValueType::List => "list",
        ValueType::Map => "map",
        ValueType::Function => "function",
        ValueType::Int => "int",
        ValueType::UInt => "uint",
        ValueType::Float => "double",
        ValueType::String => "string",
        ValueType::Bytes => "bytes",
        ValueType::Bool => "bool",
        ValueType::Duration => "google.protobuf.Duration",
        ValueType::Timestamp => "google.protobuf.Timestamp",
        ValueType::Opaque => "opaque",
        ValueType::Null => "null_type",
        ValueType::Struct => "struct",
    }
}

/// The JSON of a result; the recursion is as deep as the result, which the
/// input and tree depth limits bound.
fn result_to_json(value: &Value) -> Result<Json, String> {
    match value {
        Value::List(items) => items
            .iter()
            .map(result_to_json)
            .collect::<Result<_, _>>()
            .map(Json::Array),
        Value::Map(map) => map
            .map
            .iter()
            .map(|(key, value)| Ok((key.to_string(), result_to_json(value)?)))
            .collect::<Result<_, String>>()
            .map(Json::Object),
        Value::Float(f) if !f.is_finite() => Err(format!("the result {f} can't be represented as JSON")),
        leaf => leaf
            .json()
            .map_err(|_| format!("the result, of type {}, can't be represented as JSON", type_name(leaf))),
    }
}

#[cfg(test)]
mod tests;
