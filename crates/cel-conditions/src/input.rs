//! Input values: their size check, and their conversion to CEL values that
//! borrow the JSON's strings instead of copying them.

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt};
use cel::common::value::Val;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Why an input value was turned away.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Oversize {
    /// Its JSON text would be longer than the limit.
    Bytes { limit: usize },
    /// It nests deeper than the limit.
    Depth { limit: usize },
}

impl Oversize {
    /// The tail of an [`InputTooLarge`](crate::CelError::InputTooLarge) message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Oversize::Bytes { limit } => {
                format!("is more than {limit} bytes as JSON, the limit is {limit}")
            }
            Oversize::Depth { limit } => {
                format!("nests more than {limit} levels deep, the limit is {limit}")
            }
        }
    }
}

/// Checks `value` against both limits, walking no deeper than `max_depth`
/// and stopping as soon as the size is past `max_bytes`; returns how deep
/// it is.
pub(crate) fn check(value: &Json, max_bytes: usize, max_depth: usize) -> Result<usize, Oversize> {
    let mut walk = Walk {
        len: 0,
        deepest: 0,
        max_bytes,
        max_depth,
    };
    walk.visit(value, 1)?;
    Ok(walk.deepest)
}

/// A walk over a value that measures the length of its compact JSON text,
/// give or take the digits of numbers and the escapes of strings.
struct Walk {
    len: usize,
    deepest: usize,
    max_bytes: usize,
    max_depth: usize,
}

impl Walk {
    fn visit(&mut self, value: &Json, depth: usize) -> Result<(), Oversize> {
        if depth > self.max_depth {
            return Err(Oversize::Depth { limit: self.max_depth });
        }
        self.deepest = self.deepest.max(depth);
        let own = match value {
            Json::Null => 4,
            Json::Bool(_) => 5,
            Json::Number(_) => 8,
            Json::String(s) => s.len() + 2,
            Json::Array(items) => items.len() + 2,
            Json::Object(fields) => fields.keys().map(|k| k.len() + 4).sum::<usize>() + 2,
        };
        self.len = self.len.saturating_add(own);
        if self.len > self.max_bytes {
            return Err(Oversize::Bytes { limit: self.max_bytes });
        }
        match value {
            Json::Array(items) => items.iter().try_for_each(|item| self.visit(item, depth + 1)),
            Json::Object(fields) => fields.values().try_for_each(|field| self.visit(field, depth + 1)),
            _ => Ok(()),
        }
    }
}

/// The CEL value of a JSON value: integers that fit are `int`, larger ones
/// `uint`, other numbers `double`. Strings are borrowed, not copied.
///
/// The recursion is as deep as the value, which [`check`] has bounded.
pub(crate) fn to_val(value: &Json) -> Box<dyn Val + '_> {
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(items.iter().map(to_val).collect::<Vec<_>>())),
        Json::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_length_is_close_to_the_json_text() {
        let value = json!({"name": "nginx", "replicas": [1, 2, 3], "ok": true, "x": null});
        let text = serde_json::to_string(&value).expect("serializes").len();
        let mut walk = Walk {
            len: 0,
            deepest: 0,
            max_bytes: usize::MAX,
            max_depth: usize::MAX,
        };
        walk.visit(&value, 1).expect("no limit");
        let estimate = walk.len;
        assert!(estimate >= text && estimate <= text + 32, "{estimate} vs {text}");
    }

    #[test]
    fn size_and_depth_limits_are_enforced() {
        let value = json!({"a": [[["deep"]]]});
        assert_eq!(check(&value, 1000, 5), Ok(5));
        assert_eq!(check(&value, 1000, 4), Err(Oversize::Depth { limit: 4 }));
        assert_eq!(check(&value, 10, 5), Err(Oversize::Bytes { limit: 10 }));
    }
}
