//! The `template` executor's templates: children written as manifests whose strings may hold
//! CEL in `${...}`, the way kro's resource graphs write them. A string that is exactly one
//! `${expr}` takes the expression's value, of whatever type; `${...}` inside longer text is
//! replaced by the value as text.
//!
//! - a child's `template` and `includeWhen` see `parent` (the resource, as `kubectl get -o
//!   json` shows it);
//! - `readyWhen` and the `status` template also see each child by its `id`, as the API server
//!   last returned it (`null` while it is not there or not included).
//!
//! Every expression is compiled by cel-conditions with its limits (source size, nesting, cost
//! estimated before evaluating), and a template holds at most [`MAX_RESOURCES`] children and
//! [`MAX_EXPRESSIONS`] expressions: a hostile template is refused, it cannot stall the
//! controller.

use std::collections::{BTreeMap, BTreeSet};

use cel_conditions::{CelError, Expression};
use crd_types::common::Parameters;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::lambda::field;

/// Children one template may render.
pub const MAX_RESOURCES: usize = 32;
/// Expressions one template may hold, all of its parts together.
pub const MAX_EXPRESSIONS: usize = 256;
/// The variable every expression sees.
pub const PARENT: &str = "parent";

/// One child as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResource {
    id: String,
    template: Map<String, Value>,
    #[serde(default)]
    include_when: Vec<String>,
    #[serde(default)]
    ready_when: Vec<String>,
}

/// A value with its `${...}` compiled.
#[derive(Clone, Debug)]
enum Node {
    /// No expression inside.
    Literal(Value),
    /// A string that is exactly one expression: its value.
    Whole(Expression),
    /// Text with expressions inside: their values as text.
    Text(Vec<Piece>),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
}

#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Expression(Expression),
}

/// One child, compiled.
#[derive(Clone, Debug)]
struct Resource {
    id: String,
    template: Node,
    include_when: Vec<Expression>,
    ready_when: Vec<Expression>,
}

/// A parsed, compiled template.
#[derive(Clone, Debug)]
pub struct Template {
    resources: Vec<Resource>,
    status: Option<Node>,
}

/// Counts expressions as they are compiled, to refuse a template holding too many.
struct Compiler<'a> {
    variables: &'a [&'a str],
    compiled: &'a mut usize,
}

impl Compiler<'_> {
    fn expression(&mut self, source: &str, at: &str) -> Result<Expression, String> {
        *self.compiled += 1;
        if *self.compiled > MAX_EXPRESSIONS {
            return Err(format!("a template holds at most {MAX_EXPRESSIONS} expressions"));
        }
        Expression::compile(source, self.variables).map_err(|e| format!("{at}: {}", describe(&e)))
    }

    fn node(&mut self, value: &Value, at: &str) -> Result<Node, String> {
        Ok(match value {
            Value::String(text) => {
                let pieces = split(text).map_err(|e| format!("{at}: {e}"))?;
                match pieces.as_slice() {
                    [] => Node::Literal(value.clone()),
                    [Segment::Text(_)] => Node::Literal(value.clone()),
                    [Segment::Expression(source)] => Node::Whole(self.expression(source, at)?),
                    _ => Node::Text(
                        pieces
                            .iter()
                            .map(|segment| match segment {
                                Segment::Text(text) => Ok(Piece::Text(text.clone())),
                                Segment::Expression(source) => self.expression(source, at).map(Piece::Expression),
                            })
                            .collect::<Result<_, String>>()?,
                    ),
                }
            }
            Value::Object(map) => Node::Object(
                map.iter()
                    .map(|(key, value)| Ok((key.clone(), self.node(value, &format!("{at}.{key}"))?)))
                    .collect::<Result<_, String>>()?,
            ),
            Value::Array(items) => Node::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, &format!("{at}[{i}]")))
                    .collect::<Result<_, String>>()?,
            ),
            other => Node::Literal(other.clone()),
        })
    }

    /// A condition written bare or as one `${...}`.
    fn condition(&mut self, source: &str, at: &str) -> Result<Expression, String> {
        let bare = match split(source).map_err(|e| format!("{at}: {e}"))?.as_slice() {
            [Segment::Expression(inner)] => inner.clone(),
            _ => source.to_owned(),
        };
        self.expression(&bare, at)
    }
}

impl Template {
    /// Parses and compiles the `resources` and `status` parameters.
    ///
    /// # Errors
    ///
    /// What is wrong and where, e.g. `resources[0].template.data.x: ... undeclared variable`.
    pub fn parse(parameters: &Parameters) -> Result<Template, String> {
        let raw: Vec<RawResource> = field(parameters, "resources")?.unwrap_or_default();
        if raw.is_empty() || raw.len() > MAX_RESOURCES {
            return Err(format!(
                "resources must hold 1 to {MAX_RESOURCES} children, got {}",
                raw.len()
            ));
        }
        let mut ids = BTreeSet::new();
        for resource in &raw {
            if !is_identifier(&resource.id) || resource.id == PARENT {
                return Err(format!(
                    "resource id {:?} must be a CEL identifier (letters, digits, _) other than {PARENT}",
                    resource.id
                ));
            }
            if !ids.insert(resource.id.as_str()) {
                return Err(format!("resource id {:?} appears twice", resource.id));
            }
        }
        let mut compiled = 0;
        let mut resources = Vec::with_capacity(raw.len());
        let parent_only = [PARENT];
        let mut with_children: Vec<&str> = vec![PARENT];
        with_children.extend(ids.iter().copied());
        for (i, resource) in raw.iter().enumerate() {
            let at = format!("resources[{i}]");
            let mut compiler = Compiler {
                variables: &parent_only,
                compiled: &mut compiled,
            };
            let template = compiler.node(&Value::Object(resource.template.clone()), &format!("{at}.template"))?;
            let include_when = resource
                .include_when
                .iter()
                .enumerate()
                .map(|(j, source)| compiler.condition(source, &format!("{at}.includeWhen[{j}]")))
                .collect::<Result<_, _>>()?;
            let mut compiler = Compiler {
                variables: &with_children,
                compiled: &mut compiled,
            };
            let ready_when = resource
                .ready_when
                .iter()
                .enumerate()
                .map(|(j, source)| compiler.condition(source, &format!("{at}.readyWhen[{j}]")))
                .collect::<Result<_, _>>()?;
            resources.push(Resource {
                id: resource.id.clone(),
                template,
                include_when,
                ready_when,
            });
        }
        let status = parameters
            .get("status")
            .map(|status| {
                Compiler {
                    variables: &with_children,
                    compiled: &mut compiled,
                }
                .node(status, "status")
            })
            .transpose()?;
        Ok(Template { resources, status })
    }

    /// The children for `parent`, by id, in the order written; those whose `includeWhen` does
    /// not hold are left out.
    ///
    /// # Errors
    ///
    /// An expression that fails, naming it.
    pub fn children(&self, parent: &Value) -> Result<Vec<(String, Value)>, String> {
        let bindings = [(PARENT, parent)];
        let mut children = Vec::new();
        for resource in &self.resources {
            let mut included = true;
            for condition in &resource.include_when {
                included &= condition
                    .evaluate_bool(&bindings)
                    .map_err(|e| format!("{} includeWhen: {}", resource.id, describe(&e)))?;
            }
            if included {
                let child = render(&resource.template, &bindings).map_err(|e| format!("{}: {e}", resource.id))?;
                children.push((resource.id.clone(), child));
            }
        }
        Ok(children)
    }

    /// Whether the `readyWhen` of every `included` child holds, given the children `observed`
    /// by id; the first that does not, and why, when one does not.
    pub fn readiness(
        &self,
        parent: &Value,
        included: &[String],
        observed: &BTreeMap<String, Value>,
    ) -> Result<(), String> {
        let values = self.bound(parent, observed);
        let bindings: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for resource in self.resources.iter().filter(|r| included.contains(&r.id)) {
            if !resource.ready_when.is_empty() && !observed.contains_key(&resource.id) {
                return Err(format!("{} is not there yet", resource.id));
            }
            for condition in &resource.ready_when {
                match condition.evaluate_bool(&bindings) {
                    Ok(true) => {}
                    Ok(false) => return Err(format!("{}: {} is false", resource.id, condition.source())),
                    Err(e) => return Err(format!("{}: {}: {}", resource.id, condition.source(), describe(&e))),
                }
            }
        }
        Ok(())
    }

    /// The `status` template rendered with the children `observed` by id; a field whose
    /// expression fails (a child not there yet) is left out.
    pub fn status(&self, parent: &Value, observed: &BTreeMap<String, Value>) -> Option<Map<String, Value>> {
        let values = self.bound(parent, observed);
        let bindings: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
        match render_lenient(self.status.as_ref()?, &bindings)? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    fn bound(&self, parent: &Value, observed: &BTreeMap<String, Value>) -> Vec<(String, Value)> {
        let mut values = vec![(PARENT.to_owned(), parent.clone())];
        for resource in &self.resources {
            let child = observed.get(&resource.id).cloned().unwrap_or(Value::Null);
            values.push((resource.id.clone(), child));
        }
        values
    }
}

fn render(node: &Node, bindings: &[(&str, &Value)]) -> Result<Value, String> {
    Ok(match node {
        Node::Literal(value) => value.clone(),
        Node::Whole(expression) => evaluate(expression, bindings)?,
        Node::Text(pieces) => {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(part) => text.push_str(part),
                    Piece::Expression(expression) => {
                        text.push_str(&as_text(expression, evaluate(expression, bindings)?)?)
                    }
                }
            }
            Value::String(text)
        }
        Node::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, node)| Ok((key.clone(), render(node, bindings)?)))
                .collect::<Result<_, String>>()?,
        ),
        Node::Array(items) => Value::Array(items.iter().map(|n| render(n, bindings)).collect::<Result<_, _>>()?),
    })
}

/// As [`render`], leaving out what fails.
fn render_lenient(node: &Node, bindings: &[(&str, &Value)]) -> Option<Value> {
    match node {
        Node::Object(fields) => Some(Value::Object(
            fields
                .iter()
                .filter_map(|(key, node)| Some((key.clone(), render_lenient(node, bindings)?)))
                .collect(),
        )),
        Node::Array(items) => Some(Value::Array(
            items.iter().filter_map(|n| render_lenient(n, bindings)).collect(),
        )),
        other => render(other, bindings).ok(),
    }
}

fn evaluate(expression: &Expression, bindings: &[(&str, &Value)]) -> Result<Value, String> {
    expression
        .evaluate(bindings)
        .map_err(|e| format!("${{{}}}: {}", expression.source(), describe(&e)))
}

fn as_text(expression: &Expression, value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "${{{}}} is inside text but gives {}, not a string, number or bool",
            expression.source(),
            kind_of(&other)
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
        _ => "a scalar",
    }
}

fn describe(error: &CelError) -> String {
    error.to_string()
}

/// A piece of a template string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Text(String),
    Expression(String),
}

/// Splits `text` at its `${...}`, matching braces and skipping CEL string literals, so that
/// `${ {'a': 1}['a'] }` and `${ "}" }` are one expression each.
fn split(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            segments.push(Segment::Text(rest[..start].to_owned()));
        }
        let body = &rest[start + 2..];
        let end = closing_brace(body).ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
        let source = body[..end].trim();
        if source.is_empty() {
            return Err(format!("empty ${{}} in {text:?}"));
        }
        segments.push(Segment::Expression(source.to_owned()));
        rest = &body[end + 1..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_owned()));
    }
    Ok(segments)
}

/// The byte offset of the `}` closing an expression that starts at `body`'s beginning.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && id.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lambda::as_parameters;
    use serde_json::json;

    fn template(parameters: Value) -> Result<Template, String> {
        Template::parse(&as_parameters(parameters))
    }

    fn parent() -> Value {
        json!({"metadata": {"name": "shop", "namespace": "team-a"}, "spec": {"versions": [{"name": "v1", "image": "busybox"}, {"name": "v2", "image": "busybox"}]}})
    }

    #[test]
    fn splits_text_and_expressions_with_braces_and_quotes_inside() {
        assert_eq!(
            split("a-${parent.x}-b").unwrap(),
            vec![
                Segment::Text("a-".into()),
                Segment::Expression("parent.x".into()),
                Segment::Text("-b".into())
            ]
        );
        assert_eq!(
            split("${ {'k': '}'}['k'] }").unwrap(),
            vec![Segment::Expression("{'k': '}'}['k']".into())]
        );
        assert!(split("${parent").unwrap_err().contains("unclosed"));
        assert!(split("${ }").unwrap_err().contains("empty"));
        assert_eq!(
            split("no expressions").unwrap(),
            vec![Segment::Text("no expressions".into())]
        );
    }

    #[test]
    fn renders_children_from_the_parent_with_typed_and_text_values() {
        let template = template(json!({"resources": [{
            "id": "config",
            "template": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "${parent.metadata.name}-config"},
                "data": {
                    "versions": "${string(size(parent.spec.versions))} versions",
                    "first": "${parent.spec.versions[0].name}",
                },
            },
        }, {
            "id": "perVersion",
            "includeWhen": ["${size(parent.spec.versions) > 5}"],
            "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "never"}},
        }]}))
        .unwrap();
        let children = template.children(&parent()).unwrap();
        assert_eq!(
            children.len(),
            1,
            "includeWhen false leaves the child out: {children:?}"
        );
        assert_eq!(children[0].0, "config");
        assert_eq!(
            children[0].1,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-config"},
                   "data": {"versions": "2 versions", "first": "v1"}})
        );
    }

    #[test]
    fn readiness_and_status_see_the_observed_children() {
        let template = template(json!({
            "resources": [{
                "id": "config",
                "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
                "readyWhen": ["${has(config.data.ok)}"],
            }],
            "status": {"configName": "${config.metadata.name}", "versions": "${size(parent.spec.versions)}"},
        }))
        .unwrap();
        let none = BTreeMap::new();
        let included = ["config".to_owned()];
        assert_eq!(
            template.readiness(&parent(), &included, &none).unwrap_err(),
            "config is not there yet"
        );
        assert_eq!(
            template.readiness(&parent(), &[], &none),
            Ok(()),
            "a child left out is not waited for"
        );
        assert_eq!(
            template.status(&parent(), &none).unwrap(),
            json!({"versions": 2}).as_object().unwrap().clone()
        );
        let observed = BTreeMap::from([("config".to_owned(), json!({"metadata": {"name": "c"}, "data": {}}))]);
        assert!(
            template
                .readiness(&parent(), &included, &observed)
                .unwrap_err()
                .contains("is false")
        );
        let ready = BTreeMap::from([(
            "config".to_owned(),
            json!({"metadata": {"name": "c"}, "data": {"ok": "1"}}),
        )]);
        assert_eq!(template.readiness(&parent(), &included, &ready), Ok(()));
        assert_eq!(
            Value::Object(template.status(&parent(), &ready).unwrap()),
            json!({"configName": "c", "versions": 2})
        );
    }

    #[test]
    fn bad_templates_are_refused_with_where() {
        let child = |template: Value| json!({"resources": [{"id": "c", "template": template}]});
        let cases = [
            (json!({"resources": []}), "1 to 32"),
            (
                json!({"resources": [{"id": "parent", "template": {}}]}),
                "other than parent",
            ),
            (
                json!({"resources": [{"id": "a", "template": {}}, {"id": "a", "template": {}}]}),
                "appears twice",
            ),
            (
                child(json!({"data": {"x": "${other.name}"}})),
                "resources[0].template.data.x",
            ),
            (
                child(json!({"data": {"x": "${parent.("}})),
                "resources[0].template.data.x",
            ),
            (child(json!({"data": {"x": "${parent"}})), "unclosed"),
        ];
        for (parameters, expected) in cases {
            let error = template(parameters.clone()).unwrap_err();
            assert!(error.contains(expected), "{parameters}: {error}");
        }
        let many: Vec<Value> = (0..=MAX_EXPRESSIONS).map(|i| json!(format!("${{{i}}}"))).collect();
        let error = template(child(json!({"data": many}))).unwrap_err();
        assert!(error.contains("at most 256 expressions"), "{error}");
    }

    #[test]
    fn a_failing_expression_names_its_child() {
        let template =
            template(json!({"resources": [{"id": "c", "template": {"data": {"x": "${parent.spec.missing}"}}}]}))
                .unwrap();
        let error = template.children(&parent()).unwrap_err();
        assert!(error.starts_with("c: ${parent.spec.missing}"), "{error}");
        let text = template_text("${parent.spec.versions}");
        assert!(text.children(&parent()).unwrap_err().contains("not a string"));
    }

    fn template_text(expression: &str) -> Template {
        template(json!({"resources": [{"id": "c", "template": {"x": format!("a {expression}")}}]})).unwrap()
    }
}
