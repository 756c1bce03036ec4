//! The compile-time check: the `cel` crate has no type checker, so this is
//! it. Every name must be declared or bound by a macro, and every function
//! called must be one the runtime has.

use crate::error::{CelError, Position, excerpt};
use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo};
use cel::{Context, Env, ExecutionError, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The deepest syntax tree accepted. The nesting limit checked before
/// parsing keeps trees well below it; this guards the evaluator's recursion
/// should some construct slip past that estimate.
pub(crate) const MAX_TREE_DEPTH: usize = 256;

/// Calls `f` on each direct child of `expr`.
pub(crate) fn for_each_child<'e>(expr: &'e IdedExpr, mut f: impl FnMut(&'e IdedExpr)) {
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                f(target);
            }
            call.args.iter().for_each(f);
        }
        Expr::Comprehension(c) => {
            for child in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                f(child);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(f),
        Expr::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                f(&e.key);
                f(&e.value);
            }
            EntryExpr::StructField(field) => f(&field.value),
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                f(&e.key);
                f(&e.value);
            }
            EntryExpr::StructField(field) => f(&field.value),
        }),
        Expr::Select(select) => f(&select.operand),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// The depth of the tree under `root`, found without recursing, and the id of
/// the deepest node.
pub(crate) fn tree_depth(root: &IdedExpr) -> (usize, u64) {
    let mut deepest = (0, root.id);
    let mut stack = vec![(root, 1usize)];
    while let Some((expr, depth)) = stack.pop() {
        if depth > deepest.0 {
            deepest = (depth, expr.id);
        }
        for_each_child(expr, |child| stack.push((child, depth + 1)));
    }
    deepest
}

/// The segments of the qualified name `expr` spells, `a.b.c`, if it is an
/// identifier or field selections on one.
pub(crate) fn qualified_name(expr: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut expr = expr;
    loop {
        match &expr.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(select) if !select.test => {
                segments.push(select.field.as_str());
                expr = &select.operand;
            }
            _ => return None,
        }
    }
}

/// Whether `name` is one a user can write, rather than an operator the
/// parser named, such as `_+_` or `@in`.
fn is_user_name(name: &str) -> bool {
    // Every operator's name has a symbol in it: `_+_`, `!_`, `@in`, `_[_]`.
    name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.')
}

/// Checks an expression's references.
pub(crate) struct Checker<'a> {
    pub(crate) env: &'a Arc<Env>,
    pub(crate) declared: &'a [String],
    pub(crate) source: &'a str,
    pub(crate) info: &'a SourceInfo,
    /// Which declared variables the expression uses.
    pub(crate) used: Vec<bool>,
    /// Names bound by the macros around the node being checked.
    scopes: Vec<&'a str>,
    /// Whether the runtime has a function, by name and call style.
    known: HashMap<(String, bool), bool>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(env: &'a Arc<Env>, declared: &'a [String], source: &'a str, info: &'a SourceInfo) -> Self {
        Checker {
            env,
            declared,
            source,
            info,
            used: vec![false; declared.len()],
            scopes: Vec::new(),
            known: HashMap::new(),
        }
    }

    fn position(&self, id: u64) -> Option<Position> {
        let (start, _) = self.info.offset_for(id)?;
        Position::at_byte(self.source, usize::try_from(start).ok()?)
    }

    fn undeclared(&self, id: u64, name: &str) -> CelError {
        CelError::UndeclaredReference {
            expression: excerpt(self.source),
            position: self.position(id),
            name: name.to_owned(),
        }
    }

    /// Whether `name` is a variable here, marking a declared one as used.
    fn resolve(&mut self, name: &str) -> bool {
        if self.scopes.contains(&name) {
            return true;
        }
        match self.declared.iter().position(|d| d == name) {
            Some(i) => {
                self.used[i] = true;
                true
            }
            None => false,
        }
    }

    /// Recursion is bounded by [`MAX_TREE_DEPTH`], checked first.
    pub(crate) fn check(&mut self, expr: &'a IdedExpr) -> Result<(), CelError> {
        match &expr.expr {
            Expr::Ident(name) => {
                if self.resolve(name) || self.env.types().find_type(name).is_some() {
                    Ok(())
                } else {
                    Err(self.undeclared(expr.id, name))
                }
            }
            Expr::Select(select) => {
                // `google.protobuf.Duration` names a type, not fields of a variable.
                if let Some(segments) = qualified_name(expr)
                    && !self.scopes.contains(&segments[0])
                    && !self.declared.iter().any(|d| d == segments[0])
                    && self.env.types().find_type(&segments.join(".")).is_some()
                {
                    return Ok(());
                }
                self.check(&select.operand)
            }
            Expr::Call(call) => self.call(expr.id, call),
            Expr::Comprehension(c) => {
                self.check(&c.iter_range)?;
                self.check(&c.accu_init)?;
                let depth = self.scopes.len();
                self.scopes.push(&c.iter_var);
                if let Some(second) = &c.iter_var2 {
                    self.scopes.push(second);
                }
                self.scopes.push(&c.accu_var);
                let result = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|e| self.check(e));
                self.scopes.truncate(depth);
                result
            }
            Expr::Struct(s) => {
                if self.env.types().find_struct(&s.type_name).is_none() {
                    return Err(self.undeclared(expr.id, &s.type_name));
                }
                self.children(expr)
            }
            Expr::List(_) | Expr::Map(_) => self.children(expr),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn children(&mut self, expr: &'a IdedExpr) -> Result<(), CelError> {
        let mut children = Vec::new();
        for_each_child(expr, |child| children.push(child));
        children.into_iter().try_for_each(|child| self.check(child))
    }

    fn call(&mut self, id: u64, call: &'a CallExpr) -> Result<(), CelError> {
        let name = call.func_name.as_str();
        let args = || call.args.iter();
        if !is_user_name(name) {
            if let Some(target) = &call.target {
                self.check(target)?;
            }
            return args().try_for_each(|arg| self.check(arg));
        }
        match &call.target {
            None => {
                if !self.knows(name, false) {
                    return Err(self.unknown(id, name, false));
                }
            }
            Some(target) => {
                // As at run time, `a.b.f(x)` calls the function `a.b.f` when
                // there is one, rather than `f` on `a.b`.
                if let Some(segments) = qualified_name(target)
                    && self.knows(&format!("{}.{name}", segments.join(".")), false)
                {
                    return args().try_for_each(|arg| self.check(arg));
                }
                if !self.knows(name, true) {
                    return Err(self.unknown(id, name, true));
                }
                self.check(target)?;
            }
        }
        args().try_for_each(|arg| self.check(arg))
    }

    fn unknown(&self, id: u64, name: &str, method: bool) -> CelError {
        // A call is placed at its `(`: point at the name before it instead.
        let position = self.info.offset_for(id).and_then(|(start, _)| {
            let before = self.source.get(..usize::try_from(start).ok()?)?.trim_end();
            let at = before.strip_suffix(name).map_or(before.len(), str::len);
            Position::at_byte(self.source, at)
        });
        CelError::UnknownFunction {
            expression: excerpt(self.source),
            position: position.or_else(|| self.position(id)),
            name: name.to_owned(),
            method,
        }
    }

    /// Whether the runtime has a function `name`, called as a method or not.
    ///
    /// Asks the runtime itself, by calling it without arguments: one it
    /// doesn't have fails as an undeclared reference to that name, one it has
    /// as a mismatched overload (or runs, pure and cheap).
    fn knows(&mut self, name: &str, method: bool) -> bool {
        let key = (name.to_owned(), method);
        if let Some(known) = self.known.get(&key) {
            return *known;
        }
        let probe = IdedExpr {
            id: 0,
            expr: Expr::Call(CallExpr {
                func_name: name.to_owned(),
                target: method.then(|| {
                    Box::new(IdedExpr {
                        id: 0,
                        expr: Expr::Literal(LiteralValue::Null),
                    })
                }),
                args: Vec::new(),
            }),
        };
        let context = Context::with_env(Arc::clone(self.env));
        let known = !matches!(
            Value::resolve(&probe, &context),
            Err(ExecutionError::UndeclaredReference(missing)) if missing.as_str() == name
        );
        self.known.insert(key, known);
        known
    }
}
