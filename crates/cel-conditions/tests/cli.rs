//! Runs the `orrery-cel` binary on files, as a user would.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// A CombinedStatus whose deployments-aggregator reports 1.
const COMBINED_STATUS: &str = include_str!("../testdata/combined-status.yaml");

/// The seed's condition (KubeStellar's workload stager example).
const SEED: &str = include_str!("../testdata/seed-condition.cel");

fn orrery_cel(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orrery-cel"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().expect("piped");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("writes stdin");
    drop(input);
    child.wait_with_output().expect("exits")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

fn file(content: &str, suffix: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().expect("temp file");
    file.write_all(content.as_bytes()).expect("writes");
    file
}

#[test]
fn evaluates_the_seed_condition_against_a_yaml_file() {
    let status = file(COMBINED_STATUS, ".yaml");
    let var = format!("combinedStatus={}", status.path().display());
    let output = orrery_cel(&["--expr", SEED, "--var", &var], None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "true");

    let output = orrery_cel(&["--bool", "--expr", SEED, "--var", &var], None);
    assert_eq!(output.status.code(), Some(0));

    let zero = file(&COMBINED_STATUS.replace("\"1\"", "\"0\""), ".yaml");
    let var = format!("combinedStatus={}", zero.path().display());
    let output = orrery_cel(&["--bool", "--expr", SEED, "--var", &var], None);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(stdout(&output), "false");
}

#[test]
fn prints_any_result_as_json_and_reads_json_and_stdin() {
    let clause = file(r#"{"group":"apps","resource":"deployments","name":"nginx"}"#, ".json");
    let var = format!("c={}", clause.path().display());
    let output = orrery_cel(
        &["-e", "{'r': c.resource, 'n': [1, 2].map(x, x * 2)}", "-v", &var],
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let result: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(result, serde_json::json!({"r": "deployments", "n": [2, 4]}));

    let output = orrery_cel(&["--expr", "-1 - s", "--var", "s=-"], Some("2"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "-3");

    let output = orrery_cel(&["-e", "s.items.size()", "-v", "s=-"], Some("items: [a, b, c]\n"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "3");
}

#[test]
fn a_cel_error_exits_1_with_its_reason() {
    let output = orrery_cel(&["--expr", "a.b =="], None);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("SyntaxError: syntax error at 1:7 in \"a.b ==\""),
        "{message}"
    );

    let output = orrery_cel(&["--expr", "1 / 0"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).starts_with("EvaluationError: "), "{}", stderr(&output));

    let output = orrery_cel(&["--bool", "--expr", "1"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).starts_with("NotABool: "), "{}", stderr(&output));
}

#[test]
fn usage_errors_exit_2() {
    let output = orrery_cel(&[], None);
    assert_eq!(output.status.code(), Some(2), "no --expr");

    let output = orrery_cel(&["--expr", "true", "--var", "novalue"], None);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    let output = orrery_cel(&["--expr", "x", "--var", "x=/nonexistent/file.yaml"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/file.yaml"),
        "{}",
        stderr(&output)
    );

    let broken = file("a: [unclosed", ".yaml");
    let var = format!("x={}", broken.path().display());
    let output = orrery_cel(&["--expr", "x", "--var", &var], None);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn help_documents_the_exit_status() {
    let output = orrery_cel(&["--help"], None);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    assert!(
        help.contains("3  with --bool: the expression evaluated to false"),
        "{help}"
    );
}
