//! A conservative estimate of what evaluating an expression costs, made from
//! the syntax tree and the actual input before evaluating, since the `cel`
//! runtime has no step counter to stop it midway.
//!
//! One unit is about one node of the syntax tree evaluated, one value copied
//! or compared, or 16 bytes of a string scanned.
//!
//! The input is first summarised by path, like a schema inferred from it:
//! the longest list, map and string at each path, merged over all the
//! elements of a list. Each node of the tree then gets a cost and a shape,
//! the bounds of the value it evaluates to. A comprehension (`all`,
//! `exists`, `exists_one`, `map`, `filter`) costs its range's length times
//! its body; nested ones multiply. `a + b` is as long as both; `map` and
//! `filter` give lists as long as their range.

use cel::common::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::rc::Rc;

use crate::check::qualified_name;

/// Bytes of a string that cost one unit to scan or copy.
const STRING_BYTES_PER_UNIT: u64 = 16;
/// The longest string a conversion such as `string(1.5)` or
/// `string(timestamp(..))` makes from a short value.
const CONVERSION_LEN: u64 = 64;
/// What any call to `matches` costs: it compiles its pattern on every call.
const REGEX_BASE: u64 = 100;
/// What compiling a regular expression costs per byte of pattern and per
/// repetition it asks for: `\w{100}` compiles 100 copies of `\w`.
const REGEX_PER_BYTE: u64 = 50;
/// The most compiling a pattern costs: the regex crate refuses to build one
/// larger than its size limit, which takes tens of milliseconds to reach.
/// Also the cost of a pattern that is not a literal.
const REGEX_MAX: u64 = 500_000;

/// The units to scan or copy `bytes` bytes of string.
fn units(bytes: u64) -> u64 {
    1 + bytes / STRING_BYTES_PER_UNIT
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Upper bounds on a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Its length: elements of a list or map, bytes of a string.
    pub(crate) len: u64,
    /// The longest length of it or of anything inside it.
    pub(crate) deep: u64,
    /// What copying or comparing all of it costs.
    pub(crate) weight: u64,
}

impl Bounds {
    const SCALAR: Bounds = Bounds {
        len: 0,
        deep: 0,
        weight: 1,
    };

    fn string(len: u64) -> Bounds {
        Bounds {
            len,
            deep: len,
            weight: units(len),
        }
    }

    fn join(self, other: Bounds) -> Bounds {
        Bounds {
            len: self.len.max(other.len),
            deep: self.deep.max(other.deep),
            weight: self.weight.max(other.weight),
        }
    }

    fn within(self, other: Bounds) -> bool {
        self.len <= other.len && self.deep <= other.deep && self.weight <= other.weight
    }

    /// Bounds on anything inside a value with these bounds.
    fn inner(self) -> Bounds {
        Bounds {
            len: self.deep,
            deep: self.deep,
            weight: self.weight,
        }
    }
}

/// The bounds of an input value at one path, over every value found there.
#[derive(Debug, Default)]
pub(crate) struct Summary<'v> {
    bounds: Bounds,
    /// The join of the bounds of every element and field value.
    children: Bounds,
    /// The longest map key.
    key_len: u64,
    /// The elements of the lists here, all merged.
    items: Option<Box<Summary<'v>>>,
    /// The fields of the maps here, each merged by name.
    fields: HashMap<&'v str, Summary<'v>>,
}

impl<'v> Summary<'v> {
    /// Summarises `value`; the recursion is as deep as the value, which the
    /// input limits have bounded.
    pub(crate) fn of(value: &'v Json) -> Self {
        let mut summary = Summary::default();
        summary.add(value);
        summary
    }

    fn add(&mut self, value: &'v Json) -> Bounds {
        let own = match value {
            Json::String(s) => Bounds::string(len_u64(s.len())),
            Json::Array(items) => {
                let len = len_u64(items.len());
                let mut own = Bounds {
                    len,
                    deep: len,
                    weight: 1,
                };
                let summary = self.items.get_or_insert_with(Box::default);
                for item in items {
                    let item = summary.add(item);
                    own.deep = own.deep.max(item.deep);
                    own.weight = own.weight.saturating_add(item.weight);
                    self.children = self.children.join(item);
                }
                own
            }
            Json::Object(fields) => {
                let len = len_u64(fields.len());
                let mut own = Bounds {
                    len,
                    deep: len,
                    weight: 1,
                };
                for (key, value) in fields {
                    let key_len = len_u64(key.len());
                    self.key_len = self.key_len.max(key_len);
                    let field = self.fields.entry(key.as_str()).or_default().add(value);
                    own.deep = own.deep.max(field.deep).max(key_len);
                    own.weight = own.weight.saturating_add(units(key_len)).saturating_add(field.weight);
                    self.children = self.children.join(field);
                }
                own
            }
            Json::Null | Json::Bool(_) | Json::Number(_) => Bounds::SCALAR,
        };
        self.bounds = self.bounds.join(own);
        own
    }
}

/// What an expression's value may be, as far as its cost goes.
#[derive(Debug, Clone)]
enum Shape<'s> {
    /// A value from the input, at the path the summary describes.
    Input(&'s Summary<'s>),
    /// A list made by the expression, whose elements all have one shape.
    List { len: u64, elem: Rc<Shape<'s>> },
    /// Anything else: only its bounds are known.
    Bounded(Bounds),
}

const SCALAR: Shape<'static> = Shape::Bounded(Bounds::SCALAR);

impl<'s> Shape<'s> {
    fn bounds(&self) -> Bounds {
        match self {
            Shape::Input(summary) => summary.bounds,
            Shape::List { len, elem } => {
                let elem = elem.bounds();
                Bounds {
                    len: *len,
                    deep: elem.deep.max(*len),
                    weight: len.saturating_mul(elem.weight).saturating_add(1),
                }
            }
            Shape::Bounded(bounds) => *bounds,
        }
    }

    /// What iterating over it gives: a list's elements, a map's keys.
    fn element(&self) -> Shape<'s> {
        match self {
            Shape::Input(summary) => match (&summary.items, summary.fields.is_empty()) {
                (Some(items), true) => Shape::Input(items),
                (None, false) => Shape::Bounded(Bounds::string(summary.key_len)),
                (None, true) => SCALAR,
                (Some(items), false) => Shape::Bounded(items.bounds.join(Bounds::string(summary.key_len))),
            },
            Shape::List { elem, .. } => elem.as_ref().clone(),
            Shape::Bounded(bounds) => Shape::Bounded(bounds.inner()),
        }
    }

    /// What selecting a field gives.
    fn field(&self, name: &str) -> Shape<'s> {
        match self {
            // No input value at this path has the field: selecting it fails.
            Shape::Input(summary) => summary.fields.get(name).map_or(SCALAR, Shape::Input),
            Shape::List { .. } => SCALAR,
            Shape::Bounded(bounds) => Shape::Bounded(bounds.inner()),
        }
    }

    /// What indexing with `key` gives.
    fn index(&self, key: &IdedExpr) -> Shape<'s> {
        if let Expr::Literal(LiteralValue::String(name)) = &key.expr {
            return self.field(name.inner());
        }
        match self {
            Shape::Input(summary) => match &summary.items {
                Some(items) if summary.fields.is_empty() => Shape::Input(items),
                _ => Shape::Bounded(summary.children),
            },
            Shape::List { elem, .. } => elem.as_ref().clone(),
            Shape::Bounded(bounds) => Shape::Bounded(bounds.inner()),
        }
    }
}

/// The shape of either of two values.
fn join<'s>(a: &Shape<'s>, b: &Shape<'s>) -> Shape<'s> {
    match (a, b) {
        (Shape::Input(x), Shape::Input(y)) if std::ptr::eq(*x, *y) => Shape::Input(x),
        (Shape::List { len: l1, elem: e1 }, Shape::List { len: l2, elem: e2 }) => Shape::List {
            len: (*l1).max(*l2),
            elem: Rc::new(join(e1, e2)),
        },
        _ => Shape::Bounded(a.bounds().join(b.bounds())),
    }
}

/// The shape of `a + b`, for lists and strings.
fn concat<'s>(a: &Shape<'s>, b: &Shape<'s>) -> Shape<'s> {
    if let (Shape::List { len: l1, elem: e1 }, Shape::List { len: l2, elem: e2 }) = (a, b) {
        return Shape::List {
            len: l1.saturating_add(*l2),
            elem: Rc::new(join(e1, e2)),
        };
    }
    let (a, b) = (a.bounds(), b.bounds());
    if a.len == 0 && b.len == 0 {
        // numbers, or empty strings: nothing grows
        return Shape::Bounded(a.join(b));
    }
    let len = a.len.saturating_add(b.len);
    Shape::Bounded(Bounds {
        len,
        deep: a.deep.max(b.deep).max(len),
        weight: a.weight.saturating_add(b.weight),
    })
}

/// The product of the counts of `{n}`, `{n,}` and `{n,m}` repetitions in a
/// regular expression, at least 1.
fn repetitions(pattern: &str) -> u64 {
    let mut product: u64 = 1;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '{' => {
                let mut count: u64 = 0;
                let mut most: u64 = 0;
                while let Some(&d) = chars.peek() {
                    if let Some(digit) = d.to_digit(10) {
                        count = count.saturating_mul(10).saturating_add(u64::from(digit));
                    } else if d == ',' {
                        most = most.max(count);
                        count = 0;
                    } else {
                        break;
                    }
                    chars.next();
                }
                if chars.peek() == Some(&'}') {
                    product = product.saturating_mul(most.max(count).max(1));
                }
            }
            _ => {}
        }
    }
    product
}

/// What one call to `matches` costs.
fn regex_cost(pattern: &IdedExpr, pattern_bounds: Bounds, subject: Bounds) -> u64 {
    let compile = match &pattern.expr {
        Expr::Literal(LiteralValue::String(p)) => REGEX_PER_BYTE
            .saturating_mul(len_u64(p.inner().len()))
            .saturating_mul(repetitions(p.inner()))
            .min(REGEX_MAX),
        _ => REGEX_MAX,
    };
    let search = subject.weight.saturating_mul(units(pattern_bounds.len));
    REGEX_BASE.saturating_add(compile).saturating_add(search)
}

/// The `map` and `filter` loop step, `@result + [x]`, possibly guarded as
/// `cond ? @result + [x] : @result`, which the runtime runs in place,
/// appending to one list, rather than copying the list on every iteration.
struct Append<'e> {
    guard: Option<&'e IdedExpr>,
    items: &'e IdedExpr,
}

impl<'e> Append<'e> {
    /// The same test as the runtime's, so that both agree on which loops
    /// append in place.
    fn of(c: &'e ComprehensionExpr) -> Option<Append<'e>> {
        let accu = c.accu_var.as_str();
        let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == accu);
        let items_of = |e: &'e IdedExpr| match &e.expr {
            Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => {
                match call.args.as_slice() {
                    [lhs, rhs] if is_accu(lhs) && matches!(rhs.expr, Expr::List(_)) => Some(rhs),
                    _ => None,
                }
            }
            _ => None,
        };
        let starts_empty = matches!(&c.accu_init.expr, Expr::List(list) if list.elements.is_empty());
        if !starts_empty || !is_accu(&c.result) || !matches!(c.loop_cond.expr, Expr::Literal(_)) {
            return None;
        }
        match &c.loop_step.expr {
            Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.target.is_none() => {
                match call.args.as_slice() {
                    [guard, step, otherwise] if is_accu(otherwise) => Some(Append {
                        guard: Some(guard),
                        items: items_of(step)?,
                    }),
                    _ => None,
                }
            }
            _ => Some(Append {
                guard: None,
                items: items_of(&c.loop_step)?,
            }),
        }
    }
}

/// Estimates the cost of evaluating `expr` with `variables` bound to the
/// summarised input, converting its result included.
pub(crate) fn estimate<'e, 's>(expr: &'e IdedExpr, variables: &[(&'e str, &'s Summary<'s>)]) -> u64 {
    let mut estimator = Estimator {
        variables,
        scopes: Vec::new(),
    };
    let (cost, shape) = estimator.expr(expr);
    cost.saturating_add(shape.bounds().weight)
}

struct Estimator<'a, 'e, 's> {
    variables: &'a [(&'e str, &'s Summary<'s>)],
    /// Names bound by the comprehensions around the node being estimated.
    scopes: Vec<(&'e str, Shape<'s>)>,
}

impl<'e, 's> Estimator<'_, 'e, 's> {
    fn lookup(&self, name: &str) -> Shape<'s> {
        if let Some((_, shape)) = self.scopes.iter().rev().find(|(n, _)| *n == name) {
            return shape.clone();
        }
        match self.variables.iter().find(|(n, _)| *n == name) {
            Some((_, summary)) => Shape::Input(summary),
            // a type name, such as `int`
            None => SCALAR,
        }
    }

    fn is_variable(&self, name: &str) -> bool {
        self.scopes.iter().any(|(n, _)| *n == name) || self.variables.iter().any(|(n, _)| *n == name)
    }

    /// The recursion is bounded by the tree depth checked at compile time.
    fn expr(&mut self, expr: &'e IdedExpr) -> (u64, Shape<'s>) {
        match &expr.expr {
            Expr::Literal(literal) => (
                1,
                match literal {
                    LiteralValue::String(s) => Shape::Bounded(Bounds::string(len_u64(s.inner().len()))),
                    LiteralValue::Bytes(b) => Shape::Bounded(Bounds::string(len_u64(b.inner().len()))),
                    _ => SCALAR,
                },
            ),
            Expr::Ident(name) => (1, self.lookup(name)),
            Expr::Select(select) => {
                let (cost, operand) = self.expr(&select.operand);
                let cost = cost.saturating_add(units(len_u64(select.field.len())));
                if select.test {
                    (cost, SCALAR)
                } else {
                    (cost, operand.field(&select.field))
                }
            }
            Expr::Call(call) => self.call(call),
            Expr::List(list) => {
                let mut cost: u64 = 1;
                let mut elem: Option<Shape<'s>> = None;
                for element in &list.elements {
                    let (c, shape) = self.expr(element);
                    // each element is copied into the list
                    cost = cost.saturating_add(c).saturating_add(shape.bounds().weight);
                    elem = Some(match elem {
                        None => shape,
                        Some(previous) => join(&previous, &shape),
                    });
                }
                let len = len_u64(list.elements.len());
                (
                    cost,
                    Shape::List {
                        len,
                        elem: Rc::new(elem.unwrap_or(SCALAR)),
                    },
                )
            }
            Expr::Map(map) => self.entries(&map.entries),
            Expr::Struct(s) => self.entries(&s.entries),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Unspecified => (1, SCALAR),
        }
    }

    fn entries(&mut self, entries: &'e [cel::common::ast::IdedEntryExpr]) -> (u64, Shape<'s>) {
        let len = len_u64(entries.len());
        let mut cost: u64 = 1;
        let mut bounds = Bounds {
            len,
            deep: len,
            weight: 1,
        };
        for entry in entries {
            let (key, value) = match &entry.expr {
                EntryExpr::MapEntry(e) => (Some(&e.key), &e.value),
                EntryExpr::StructField(f) => (None, &f.value),
            };
            for part in key.into_iter().chain([value]) {
                let (c, shape) = self.expr(part);
                let b = shape.bounds();
                cost = cost.saturating_add(c).saturating_add(b.weight);
                bounds.deep = bounds.deep.max(b.deep);
                bounds.weight = bounds.weight.saturating_add(b.weight);
            }
        }
        (cost, Shape::Bounded(bounds))
    }

    fn call(&mut self, call: &'e CallExpr) -> (u64, Shape<'s>) {
        // In `optional.of(x)` the target names the function: it isn't evaluated.
        let namespace = call
            .target
            .as_deref()
            .and_then(qualified_name)
            .is_some_and(|segments| !self.is_variable(segments[0]));
        let target = match &call.target {
            Some(target) if !namespace => Some(self.expr(target)),
            _ => None,
        };
        let args: Vec<(u64, Shape<'s>)> = call.args.iter().map(|arg| self.expr(arg)).collect();
        let evaluated = target
            .iter()
            .chain(&args)
            .fold(1u64, |sum, (cost, _)| sum.saturating_add(*cost));

        // The operands, the target first, with their bounds.
        let operands: Vec<&Shape<'s>> = target.iter().chain(&args).map(|(_, s)| s).collect();
        let bounds: Vec<Bounds> = operands.iter().map(|s| s.bounds()).collect();
        let b = |i: usize| bounds.get(i).copied().unwrap_or(Bounds::SCALAR);
        let shape = |i: usize| operands.get(i).map_or(SCALAR, |s| (*s).clone());
        let all_weights = bounds.iter().fold(0u64, |sum, b| sum.saturating_add(b.weight));

        let (own, result) = match call.func_name.as_str() {
            operators::CONDITIONAL => (0, join(&shape(1), &shape(2))),
            operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE => {
                (0, SCALAR)
            }
            operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS => (b(0).weight.min(b(1).weight), SCALAR),
            operators::IN => (all_weights, SCALAR),
            operators::ADD => (all_weights, concat(&shape(0), &shape(1))),
            operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO | operators::NEGATE => {
                (0, SCALAR)
            }
            operators::INDEX | operators::OPT_INDEX => match call.args.get(1) {
                Some(key) => (b(1).weight, shape(0).index(key)),
                None => (0, SCALAR),
            },
            operators::OPT_SELECT => match call.args.get(1) {
                Some(field) => (b(1).weight, shape(0).index(field)),
                None => (0, SCALAR),
            },
            "size" | "hasValue" | "none" => (0, SCALAR),
            "contains" | "startsWith" | "endsWith" => (all_weights, SCALAR),
            "matches" => {
                // `s.matches(p)` or `matches(s, p)`: the subject is operand 0.
                let pattern = call.args.get(if call.target.is_some() { 0 } else { 1 });
                let own = pattern.map_or(REGEX_MAX, |p| regex_cost(p, b(1), b(0)));
                (own, SCALAR)
            }
            "dyn" | "of" | "ofNonZeroValue" | "value" => (all_weights, shape(0)),
            "or" | "orValue" => (all_weights, join(&shape(0), &shape(1))),
            "string" | "bytes" => (
                all_weights,
                Shape::Bounded(Bounds::string(b(0).len.max(CONVERSION_LEN))),
            ),
            "int" | "uint" | "double" | "bool" | "type" | "timestamp" | "duration" => (all_weights, SCALAR),
            name if name.starts_with("get") => (all_weights, SCALAR),
            // A function this estimate doesn't know: assume it reads all of
            // its arguments and returns something as large as all of them.
            _ => {
                let len = bounds.iter().fold(CONVERSION_LEN, |sum, b| sum.saturating_add(b.len));
                let deep = bounds.iter().fold(len, |deep, b| deep.max(b.deep));
                (
                    all_weights,
                    Shape::Bounded(Bounds {
                        len,
                        deep,
                        weight: all_weights.saturating_add(units(CONVERSION_LEN)),
                    }),
                )
            }
        };
        (evaluated.saturating_add(own), result)
    }

    /// The cost of `loop_cond` and `loop_step`, and the shape of the step.
    fn step(&mut self, c: &'e ComprehensionExpr) -> (u64, Shape<'s>) {
        let (cond, _) = self.expr(&c.loop_cond);
        let (step, shape) = self.expr(&c.loop_step);
        (cond.saturating_add(step), shape)
    }

    fn comprehension(&mut self, c: &'e ComprehensionExpr) -> (u64, Shape<'s>) {
        let (range_cost, range) = self.expr(&c.iter_range);
        let (init_cost, init) = self.expr(&c.accu_init);
        let range_bounds = range.bounds();
        let iterations = range_bounds.len;
        // Every element is copied into the loop variable once.
        let mut cost = range_cost
            .saturating_add(init_cost)
            .saturating_add(range_bounds.weight)
            .saturating_add(iterations);

        let outer = self.scopes.len();
        self.scopes.push((&c.iter_var, range.element()));
        if let Some(second) = &c.iter_var2 {
            self.scopes.push((second, Shape::Bounded(range_bounds.inner())));
        }
        let (per_iteration, accu) = match Append::of(c) {
            Some(append) => {
                let (cond, _) = self.expr(&c.loop_cond);
                let guard = append.guard.map_or(0, |g| self.expr(g).0);
                let (items_cost, items) = self.expr(append.items);
                let accu = match items {
                    Shape::List { len, elem } => Shape::List {
                        len: len.saturating_mul(iterations),
                        elem,
                    },
                    other => other,
                };
                (cond.saturating_add(guard).saturating_add(items_cost), accu)
            }
            None => {
                self.scopes.push((&c.accu_var, init.clone()));
                let (first, stepped) = self.step(c);
                self.scopes.pop();
                let (b0, b1) = (init.bounds(), stepped.bounds());
                if b1.within(b0) {
                    (first, join(&init, &stepped))
                } else {
                    // The accumulator grows: by at most the step's size on
                    // every iteration. Estimate the step again at that size.
                    let len = b0.len.saturating_add(iterations.saturating_mul(b1.len));
                    let grown = Shape::Bounded(Bounds {
                        len,
                        deep: b0.deep.max(b1.deep).max(len),
                        weight: b0.weight.saturating_add(iterations.saturating_mul(b1.weight)),
                    });
                    self.scopes.push((&c.accu_var, grown.clone()));
                    let (per_iteration, _) = self.step(c);
                    self.scopes.pop();
                    (per_iteration, grown)
                }
            }
        };
        cost = cost.saturating_add(iterations.saturating_mul(per_iteration));
        self.scopes.truncate(outer);

        self.scopes.push((&c.accu_var, accu));
        let (result_cost, result) = self.expr(&c.result);
        self.scopes.truncate(outer);
        (cost.saturating_add(result_cost), result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(source: &str, name: &str, value: &Json) -> u64 {
        let env = cel::Env::stdlib();
        let program = env.compile(source).expect("parses");
        let summary = Summary::of(value);
        estimate(program.expression(), &[(name, &summary)])
    }

    #[test]
    fn nested_comprehensions_multiply() {
        let small = json!((0..10).collect::<Vec<_>>());
        let big = json!((0..10_000).collect::<Vec<_>>());
        let one = cost("l.all(x, true)", "l", &big);
        let three = cost("l.all(x, l.all(y, l.all(z, true)))", "l", &big);
        assert!(one > 10_000 && one < 200_000, "{one}");
        assert!(three > 1_000_000_000_000, "{three}");
        assert!(cost("l.all(x, l.all(y, l.all(z, true)))", "l", &small) < 100_000);
    }

    #[test]
    fn paths_keep_their_own_lengths() {
        // 100 results of 10 rows of 1 column: the rows are not 100 long.
        let status = json!({"results": (0..100).map(|_| json!({
            "name": "x",
            "rows": (0..10).map(|_| json!({"columns": [{"type": "Number", "float": "1"}]})).collect::<Vec<_>>()
        })).collect::<Vec<_>>()});
        let c = cost(
            "s.results.exists(r, r.rows.exists(row, row.columns.exists(col, col.float == '1')))",
            "s",
            &status,
        );
        assert!(c < 100_000, "{c}");
        assert!(c > 1_000, "{c}");
    }

    #[test]
    fn lists_made_by_map_and_concatenation_keep_their_bounds() {
        let l = json!((0..1000).collect::<Vec<_>>());
        // each of the 1000 elements is a list of 1000: 10^6 just to build it
        assert!(cost("l.map(x, l)", "l", &l) >= 1_000_000);
        // iterating over the inner lists multiplies again
        assert!(cost("l.map(x, l).all(y, y.all(z, true))", "l", &l) >= 1_000_000);
        assert!(cost("(l + l).all(x, (l + l).all(y, true))", "l", &l) >= 4_000_000);
        assert!(cost("l.filter(x, x > 1).size()", "l", &l) < 20_000);
    }

    #[test]
    fn strings_cost_by_length() {
        let s = json!("a".repeat(1 << 20));
        let short = cost("s.contains('x')", "s", &json!("abc"));
        let long = cost("s.contains('x')", "s", &s);
        assert!(long > short + 60_000, "{short} {long}");
    }

    #[test]
    fn regular_expressions_cost_by_their_repetitions() {
        let s = json!("abc");
        let simple = cost("s.matches('^[a-z]+$')", "s", &s);
        let repeated = cost("s.matches('\\\\w{1000}')", "s", &s);
        let dynamic = cost("s.matches(s)", "s", &s);
        assert!(simple < 1_000, "{simple}");
        assert!(repeated >= 400_000, "{repeated}");
        assert!(dynamic >= REGEX_MAX, "{dynamic}");
        assert_eq!(repetitions("a{2}(b{3,5}){4,}\\{9}"), 2 * 5 * 4);
    }
}
