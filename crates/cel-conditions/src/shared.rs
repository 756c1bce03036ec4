//! Compiled expressions shared by source text.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use crate::{CelError, Compiled, Expression};

/// Hands out one compiled form per distinct (source, variables), for as long as somebody
/// holds it. Controllers watching many resources that carry the same expressions (copies of
/// one template, say) then pay its memory once; a compiled expression is a few KiB.
///
/// Compile errors are not kept: the caller decides how long to remember them.
#[derive(Debug, Default)]
pub struct SharedExpressions {
    compiled: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_source: HashMap<(String, Vec<String>), Weak<Compiled>>,
    /// Entries alive after the last sweep: the next sweep runs when there are twice as many.
    live_after_sweep: usize,
}

impl SharedExpressions {
    /// [`Expression::compile`], sharing the result with every other holder of the same source
    /// and variables.
    ///
    /// # Errors
    ///
    /// As [`Expression::compile`].
    pub fn compile(&self, source: &str, variables: &[&str]) -> Result<Expression, CelError> {
        let key = (source.to_owned(), variables.iter().map(|v| (*v).to_owned()).collect());
        {
            let entries = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(inner) = entries.by_source.get(&key).and_then(Weak::upgrade) {
                return Ok(Expression { inner });
            }
        }
        // Compiled outside the lock: a slow compile holds nobody else up.
        let expression = Expression::compile(source, variables)?;
        let mut entries = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(inner) = entries.by_source.get(&key).and_then(Weak::upgrade) {
            return Ok(Expression { inner });
        }
        if entries.by_source.len() >= 2 * entries.live_after_sweep.max(32) {
            entries.by_source.retain(|_, compiled| compiled.strong_count() > 0);
            entries.live_after_sweep = entries.by_source.len();
        }
        entries
            .by_source
            .insert(key, std::sync::Arc::downgrade(&expression.inner));
        Ok(expression)
    }

    /// How many distinct compiled expressions are held now.
    pub fn len(&self) -> usize {
        let entries = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.by_source.values().filter(|c| c.strong_count() > 0).count()
    }

    /// True when no compiled expression is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_compiled_form_per_source_while_held() {
        let shared = SharedExpressions::default();
        let a = shared.compile("x > 1", &["x"]).unwrap();
        let b = shared.compile("x > 1", &["x"]).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a.inner, &b.inner));
        let other_variables = shared.compile("x > 1", &["x", "y"]).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&a.inner, &other_variables.inner));
        assert_eq!(shared.len(), 2);
        drop((a, b, other_variables));
        assert!(shared.is_empty());
    }

    #[test]
    fn errors_are_returned_not_kept() {
        let shared = SharedExpressions::default();
        assert!(shared.compile("x >", &["x"]).is_err());
        assert!(shared.compile("x >", &["x"]).is_err());
        assert!(shared.is_empty());
    }

    #[test]
    fn entries_nobody_holds_are_swept() {
        let shared = SharedExpressions::default();
        for i in 0..1000 {
            let _dropped = shared.compile(&format!("x > {i}"), &["x"]).unwrap();
        }
        let entries = shared.compiled.lock().unwrap();
        assert!(
            entries.by_source.len() <= 64,
            "{} entries kept",
            entries.by_source.len()
        );
    }
}
