//! Tests of the public API: the conditions Orrery evaluates, and hostile
//! expressions and input.

use super::*;
use serde_json::json;

/// The seed's condition (KubeStellar's workload stager example).
const SEED: &str = include_str!("../testdata/seed-condition.cel");

/// A CombinedStatus whose deployments-aggregator reports 1.
const COMBINED_STATUS: &str = include_str!("../testdata/combined-status.yaml");

fn combined_status(float: &str) -> Json {
    let mut status: Json = serde_yaml::from_str(COMBINED_STATUS).expect("valid YAML");
    status["results"][0]["rows"][0]["columns"][0]["float"] = json!(float);
    status
}

fn compile(source: &str, variables: &[&str]) -> Expression {
    Expression::compile(source, variables).unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn compile_err(source: &str, variables: &[&str]) -> CelError {
    Expression::compile(source, variables).expect_err(source)
}

fn eval(source: &str, bindings: &[(&str, &Json)]) -> Result<Json, CelError> {
    let names: Vec<&str> = bindings.iter().map(|(n, _)| *n).collect();
    compile(source, &names).evaluate(bindings)
}

fn list(n: usize) -> Json {
    json!((0..n).collect::<Vec<_>>())
}

// --- the conditions Orrery evaluates ---

#[test]
fn the_seed_condition_holds_for_a_float_of_1_only() {
    let expr = compile(SEED, &["combinedStatus"]);
    let yes = combined_status("1");
    let no = combined_status("0");
    assert_eq!(expr.evaluate_bool(&[("combinedStatus", &yes)]), Ok(true));
    assert_eq!(expr.evaluate_bool(&[("combinedStatus", &no)]), Ok(false));
}

#[test]
fn the_downsync_filter_matches_on_the_resource() {
    let expr = compile(r#"downsyncClause.resource == "deployments""#, &["downsyncClause"]);
    let deployments =
        json!({"group":"apps","version":"v1","resource":"deployments","namespace":"default","name":"nginx"});
    let services = json!({"group":"","version":"v1","resource":"services","namespace":"default","name":"nginx"});
    assert_eq!(expr.evaluate_bool(&[("downsyncClause", &deployments)]), Ok(true));
    assert_eq!(expr.evaluate_bool(&[("downsyncClause", &services)]), Ok(false));
}

#[test]
fn one_compilation_serves_many_evaluations_and_threads() {
    let expr = compile("x.n * 2", &["x"]);
    for n in 0..100 {
        assert_eq!(expr.evaluate(&[("x", &json!({ "n": n }))]), Ok(json!(n * 2)));
    }
    let handles: Vec<_> = (0..4)
        .map(|n| {
            let expr = expr.clone();
            std::thread::spawn(move || expr.evaluate(&[("x", &json!({ "n": n }))]))
        })
        .collect();
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.join().expect("no panic"), Ok(json!(n * 2)));
    }
}

#[test]
fn results_come_back_as_json() {
    let x = json!({"items": [1, 2, 3], "name": "a"});
    assert_eq!(eval("x.items.map(i, i * 10)", &[("x", &x)]), Ok(json!([10, 20, 30])));
    assert_eq!(
        eval(
            "{'name': x.name, 'n': size(x.items), 'ok': true, 'none': null}",
            &[("x", &x)]
        ),
        Ok(json!({"name": "a", "n": 3, "ok": true, "none": null}))
    );
    assert_eq!(eval("x.items.filter(i, i > 1)", &[("x", &x)]), Ok(json!([2, 3])));
    assert_eq!(eval("1.5 + 1.0", &[]), Ok(json!(2.5)));
    assert_eq!(eval("18446744073709551615u", &[]), Ok(json!(u64::MAX)));
    assert_eq!(eval("b'hi'", &[]), Ok(json!("aGk=")));
}

#[test]
fn macros_types_and_optionals_are_available() {
    let x = json!({"a": {"b": 1}, "l": ["x", "yy"]});
    let yes = |source: &str| eval(source, &[("x", &x)]).map_err(|e| e.to_string());
    for source in [
        "has(x.a.b) && !has(x.a.c)",
        "x.l.all(s, size(s) > 0) && x.l.exists_one(s, s == 'yy')",
        "type(x.a.b) == int && type(x.l) == list",
        "x.?a.?c.orValue(7) == 7",
        "x.l.map(s, s + '!')[1] == 'yy!'",
        "x.a.exists(k, k == 'b')",
        "'yy' in x.l && 'b' in x.a",
        "x.l[0].startsWith('x') && 'abc'.matches('^a.c$')",
        "timestamp('2024-01-02T00:00:00Z').getFullYear() == 2024",
        "duration('1h') > duration('59m')",
        "optional.of(1).value() == 1",
        "int('42') + 1 == 43 && string(42) == '42' && double(1) == 1.0",
    ] {
        assert_eq!(yes(source), Ok(json!(true)), "{source}");
    }
}

#[test]
fn declared_variables_may_be_left_unbound_when_unused() {
    let expr = compile("a == 1", &["a", "b"]);
    assert_eq!(expr.evaluate(&[("a", &json!(1))]), Ok(json!(true)));
    assert_eq!(expr.variables(), ["a", "b"]);
    assert_eq!(expr.source(), "a == 1");
}

#[test]
fn macro_variables_shadow_and_go_out_of_scope() {
    let x = json!([1, 2]);
    assert_eq!(eval("x.all(x, x > 0)", &[("x", &x)]), Ok(json!(true)));
    let error = compile_err("[1].all(i, true) && i == 1", &[]);
    assert!(
        matches!(&error, CelError::UndeclaredReference { name, .. } if name == "i"),
        "{error:?}"
    );
}

// --- every error variant ---

#[test]
fn a_huge_expression_is_too_large() {
    let source = "a".repeat(20_000);
    let error = compile_err(&source, &[]);
    assert!(matches!(
        error,
        CelError::ExpressionTooLarge {
            len: 20_000,
            limit: 10_240,
            ..
        }
    ));
    assert_eq!(error.reason(), "ExpressionTooLarge");
    let message = error.to_string();
    assert!(message.contains("\"aaaaaaaa"), "{message}");
    assert!(message.contains('…'), "{message}");
}

#[test]
fn deeply_nested_parentheses_are_refused_before_parsing() {
    // Far past the source limit too: the nesting check must hold on its own.
    let limits = Limits {
        max_source_bytes: usize::MAX,
        ..Limits::default()
    };
    for source in [
        format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        "(".repeat(100_000),
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{}true{}", "[1].all(x, ".repeat(5_000), ")".repeat(5_000)),
        format!("a{}", ".b".repeat(10_000)),
        format!("1{}", " + 1".repeat(10_000)),
    ] {
        let error = Expression::compile_with_limits(&source, &["a"], limits).expect_err("too deep");
        assert_eq!(error.reason(), "ExpressionTooDeep", "{error}");
        assert!(matches!(error, CelError::ExpressionTooDeep { limit: 32, .. }));
    }
    let source = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    let message = compile_err(&source, &[]).to_string();
    assert!(
        message.starts_with("expression too deep at 1:33 in \"((((("),
        "{message}"
    );
}

#[test]
fn nesting_up_to_the_limit_compiles_and_evaluates() {
    // 32 levels of every kind the parser and evaluator recurse on.
    for source in [
        format!("{}1{}", "(".repeat(32), ")".repeat(32)),
        format!("{}1{}", "[".repeat(32), "]".repeat(32)),
        format!("{}1{}", "int(".repeat(32), ")".repeat(32)),
        format!("1{}", " + 1".repeat(32)),
        format!("{}true{}", "[1].all(x, ".repeat(16), ")".repeat(16)),
        format!("{}1", "-".repeat(32)),
    ] {
        let expr = compile(&source, &[]);
        expr.evaluate(&[]).unwrap_or_else(|e| panic!("{source}: {e}"));
    }
}

#[test]
fn a_syntax_error_names_its_position() {
    let error = compile_err("a.b ==", &["a"]);
    assert_eq!(error.reason(), "SyntaxError");
    assert!(
        matches!(
            error,
            CelError::SyntaxError {
                position: Some(Position { line: 1, column: 7 }),
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with("syntax error at 1:7 in \"a.b ==\": "), "{message}");

    let error = compile_err("a &&\n  b ==", &["a", "b"]);
    assert!(error.to_string().contains(" at 2:7 "), "{error}");
    assert_eq!(compile_err("", &[]).reason(), "SyntaxError");
    assert_eq!(compile_err("1 +* 2", &[]).reason(), "SyntaxError");
    assert_eq!(compile_err("x.exists(1, true)", &["x"]).reason(), "SyntaxError");
}

#[test]
fn an_undeclared_variable_is_refused_at_compile_time() {
    let error = compile_err("combinedStatus.results.size() > 0 && foo == 1", &["combinedStatus"]);
    assert_eq!(error.reason(), "UndeclaredReference");
    assert!(
        matches!(&error, CelError::UndeclaredReference { name, position: Some(Position { line: 1, column: 38 }), .. } if name == "foo"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message
            .starts_with("undeclared reference to 'foo' at 1:38 in \"combinedStatus.results.size() > 0 && foo == 1\""),
        "{message}"
    );
    // inside a macro, and in a field selection
    assert_eq!(compile_err("[1].exists(x, y > x)", &[]).reason(), "UndeclaredReference");
    assert_eq!(
        compile_err("status.phase", &["combinedStatus"]).reason(),
        "UndeclaredReference"
    );
    // type names are not variables, but resolve
    compile(
        "type(1) == int && google.protobuf.Duration == type(duration('1s'))",
        &[],
    );
}

#[test]
fn an_unknown_function_is_refused_at_compile_time() {
    let error = compile_err("size(x) > 0 && bogus(x)", &["x"]);
    assert_eq!(error.reason(), "UnknownFunction");
    assert!(
        matches!(&error, CelError::UnknownFunction { name, method: false, position: Some(p), .. } if name == "bogus" && p.column == 16),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("unknown function 'bogus' at 1:16 in \"size(x)"),
        "{error}"
    );

    let error = compile_err("x.name.lowerAscii() == 'a'", &["x"]);
    assert!(
        matches!(&error, CelError::UnknownFunction { name, method: true, position: Some(Position { line: 1, column: 8 }), .. } if name == "lowerAscii"),
        "{error:?}"
    );
    assert!(error.to_string().contains("called as a method"), "{error}");
    // known ones pass, called either way where CEL allows it
    compile("x.size() + size(x) > 0 && x.startsWith('a') && matches(x, 'a')", &["x"]);
    // the two-argument `exists` is a macro, the one-argument one is no function
    assert_eq!(compile_err("x.exists(y)", &["x", "y"]).reason(), "UnknownFunction");
}

#[test]
fn nested_loops_over_a_big_list_stop_before_evaluating() {
    let expr = compile("l.all(x, l.all(y, l.all(z, true)))", &["l"]);
    let big = list(10_000);
    let error = expr.evaluate(&[("l", &big)]).expect_err("too costly");
    assert!(
        matches!(error, CelError::CostLimitExceeded { cost, budget: 1_000_000, .. } if cost > 1_000_000_000_000),
        "{error:?}"
    );
    assert_eq!(error.reason(), "CostLimitExceeded");
    let message = error.to_string();
    assert!(message.contains("exceeds the budget of 1000000"), "{message}");
    assert!(message.contains("\"l.all(x, l.all(y, l.all(z, true)))\""), "{message}");

    let small = list(10);
    assert_eq!(expr.evaluate(&[("l", &small)]), Ok(json!(true)));
    // one loop over the big list is fine, whichever macro makes it
    for source in [
        "l.all(x, x >= 0)",
        "l.exists(x, x == 9999)",
        "l.exists_one(x, x == 5)",
        "l.filter(x, x % 2 == 0).size() == 5000",
        "l.map(x, x * 2)[9999] == 19998",
    ] {
        assert_eq!(eval(source, &[("l", &big)]), Ok(json!(true)), "{source}");
    }
    assert!(expr.estimate_cost(&[("l", &small)]).expect("binds") < 100_000);
}

#[test]
fn growing_lists_and_strings_count_against_the_budget() {
    let l = list(2_000);
    for source in [
        // a list of 2000 lists of 2000: 4 million elements copied
        "l.map(x, l).size() > 0",
        "l.map(x, l + l).all(y, true)",
        "l.all(x, (l + l + l).exists(y, y == x))",
        "l.filter(x, true).map(y, l).size() > 0",
    ] {
        let error = eval(source, &[("l", &l)]).expect_err(source);
        assert_eq!(error.reason(), "CostLimitExceeded", "{source}: {error}");
    }
    let s = json!("x".repeat(1 << 20));
    let error = eval("[s, s, s, s].map(a, a + a + a + a).size() > 0", &[("s", &s)]).expect_err("big");
    assert_eq!(error.reason(), "CostLimitExceeded", "{error}");
    // a handful of the same operations stays within it
    assert_eq!(eval("l.map(x, x + 1).size()", &[("l", &l)]), Ok(json!(2_000)));
}

#[test]
fn runtime_errors_name_the_expression() {
    let cases = [
        ("1 / x", "division by zero"),
        ("x % 0", "remainder by zero"),
        ("9223372036854775807 + 1", "overflow"),
        ("-9223372036854775807 - 2", "overflow"),
        ("m.missing", "no such key"),
        ("[1, 2][5]", "index out of bounds"),
        ("1 + 'a'", "unsupported binary operator 'add'"),
        ("x.startsWith(1)", "no matching overload"),
        ("int('abc')", ""),
        ("'a'.matches('(')", "regex"),
        ("{'a': 1, 'a': 2}", "repeated key"),
    ];
    for (source, wanted) in cases {
        let error = eval(source, &[("x", &json!(0)), ("m", &json!({}))]).expect_err(source);
        assert_eq!(error.reason(), "EvaluationError", "{source}: {error}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("evaluation error in {source:?}: ")),
            "{message}"
        );
        assert!(message.to_lowercase().contains(wanted), "{source}: {message}");
    }
}

#[test]
fn results_json_cannot_hold_are_errors() {
    for source in ["0.0 / 0.0", "1.0 / 0.0", "[-1.0 / 0.0]"] {
        let error = eval(source, &[]).expect_err(source);
        assert_eq!(error.reason(), "EvaluationError", "{source}: {error}");
    }
}

#[test]
fn evaluate_bool_refuses_other_results() {
    let expr = compile("x + 1", &["x"]);
    let error = expr.evaluate_bool(&[("x", &json!(1))]).expect_err("an int");
    assert!(
        matches!(&error, CelError::NotABool { got, .. } if got == "int"),
        "{error:?}"
    );
    assert_eq!(error.reason(), "NotABool");
    assert_eq!(
        error.to_string(),
        "expression must evaluate to a bool, got int in \"x + 1\""
    );
    let got = |source: &str| match eval(source, &[]).and(compile(source, &[]).evaluate_bool(&[])) {
        Err(CelError::NotABool { got, .. }) => got,
        other => panic!("{source}: {other:?}"),
    };
    assert_eq!(got("'a'"), "string");
    assert_eq!(got("[true]"), "list");
    assert_eq!(got("null"), "null_type");
    assert_eq!(got("1.5"), "double");
}

#[test]
fn oversized_input_is_refused() {
    let expr = compile("size(x) > 0", &["x"]);
    let big = json!("x".repeat(4 << 20));
    let error = expr.evaluate(&[("x", &big)]).expect_err("4 MiB");
    assert_eq!(error.reason(), "InputTooLarge");
    let message = error.to_string();
    assert!(
        message.contains("variable 'x'") && message.contains("3145728"),
        "{message}"
    );

    let mut deep = json!(1);
    for _ in 0..100 {
        deep = Json::Array(vec![deep]);
    }
    let error = expr.evaluate(&[("x", &deep)]).expect_err("100 deep");
    assert_eq!(error.reason(), "InputTooLarge");
    assert!(error.to_string().contains("64 levels"), "{error}");

    // A value deeper than anything serde_json would parse, built by hand.
    let mut deeper = json!(1);
    for _ in 0..100_000 {
        deeper = Json::Array(vec![deeper]);
    }
    assert_eq!(
        expr.evaluate(&[("x", &deeper)]).map_err(|e| e.reason()),
        Err("InputTooLarge")
    );
    // dropping it recursively would overflow this thread's stack
    let mut items = vec![deeper];
    while let Some(value) = items.pop() {
        if let Json::Array(inner) = value {
            items.extend(inner);
        }
    }
}

#[test]
fn bindings_must_match_the_declared_variables() {
    let expr = compile("a == 1", &["a"]);
    let one = json!(1);
    let reason = |bindings: &[(&str, &Json)]| expr.evaluate(bindings).map_err(|e| e.reason());
    assert_eq!(reason(&[]), Err("InvalidVariable"));
    assert_eq!(reason(&[("a", &one), ("b", &one)]), Err("InvalidVariable"));
    assert_eq!(reason(&[("a", &one), ("a", &one)]), Err("InvalidVariable"));
    let error = expr.evaluate(&[]).expect_err("unbound");
    assert_eq!(
        error.to_string(),
        "invalid variable 'a' for \"a == 1\": used by the expression but not bound"
    );

    for names in [&["a.b"][..], &["1a"], &["in"], &["a", "a"], &[""]] {
        let error = Expression::compile("true", names).expect_err("invalid name");
        assert_eq!(error.reason(), "InvalidVariable", "{names:?}");
    }
}

#[test]
fn custom_limits_apply() {
    let limits = Limits {
        max_source_bytes: 10,
        max_nesting: 2,
        cost_budget: 50,
        max_input_bytes: 1000,
        max_input_depth: 3,
    };
    let compile = |s: &str| Expression::compile_with_limits(s, &["x"], limits);
    assert_eq!(
        compile("x == 12345678").map(|_| ()).map_err(|e| e.reason()),
        Err("ExpressionTooLarge")
    );
    assert_eq!(
        compile("x.a.b.c").map(|_| ()).map_err(|e| e.reason()),
        Err("ExpressionTooDeep")
    );
    let expr = compile("x.all(i,i)").expect("compiles");
    assert_eq!(expr.limits(), &limits);
    assert_eq!(expr.evaluate(&[("x", &json!([true]))]), Ok(json!(true)));
    assert_eq!(
        expr.evaluate(&[("x", &json!(vec![true; 40]))]).map_err(|e| e.reason()),
        Err("CostLimitExceeded")
    );
    assert_eq!(
        expr.evaluate(&[("x", &json!([[[[true]]]]))]).map_err(|e| e.reason()),
        Err("InputTooLarge")
    );
}

#[test]
fn every_reason_is_distinct_and_camel_case() {
    let errors = [
        compile_err(&"1".repeat(20_000), &[]),
        compile_err(&"(".repeat(100), &[]),
        compile_err("1 +", &[]),
        compile_err("y", &[]),
        compile_err("f()", &[]),
        eval("l.all(a, l.all(b, l.all(c, true)))", &[("l", &list(1000))]).expect_err("cost"),
        eval("1 / 0", &[]).expect_err("division"),
        compile("1", &[]).evaluate_bool(&[]).expect_err("not a bool"),
        compile("x", &["x"])
            .evaluate(&[("x", &json!("x".repeat(4 << 20)))])
            .expect_err("input"),
        compile("x", &["x"]).evaluate(&[]).expect_err("unbound"),
    ];
    let reasons: Vec<&str> = errors.iter().map(CelError::reason).collect();
    assert_eq!(
        reasons,
        [
            "ExpressionTooLarge",
            "ExpressionTooDeep",
            "SyntaxError",
            "UndeclaredReference",
            "UnknownFunction",
            "CostLimitExceeded",
            "EvaluationError",
            "NotABool",
            "InputTooLarge",
            "InvalidVariable",
        ]
    );
}

#[test]
fn a_small_caller_stack_is_enough() {
    // Compiling and evaluating the deepest expressions the limits allow, from
    // a thread with a small stack: both move to a stack of their own.
    let source = format!("{}x.all(y, y){}", "[1].all(v, ".repeat(15), ")".repeat(15));
    let thread = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let expr = Expression::compile(&source, &["x"])?;
            expr.evaluate(&[("x", &json!([true, true]))])
        })
        .expect("spawns");
    assert_eq!(thread.join().expect("no overflow"), Ok(json!(true)));
}
