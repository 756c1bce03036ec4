//! Evaluates a CEL condition against YAML or JSON files, the way Orrery's
//! controllers do.

use anyhow::{Context as _, bail};
use cel_conditions::{CelError, Expression};
use clap::Parser;
use serde_json::Value as Json;
use std::io::Read as _;
use std::process::ExitCode;

/// Evaluate a CEL expression against YAML or JSON documents and print the
/// result as JSON.
#[derive(Debug, Parser)]
#[command(
    name = "orrery-cel",
    version,
    after_help = "Exit status:\n  \
        0  the expression evaluated (with --bool: to true)\n  \
        1  a CEL error: compiling or evaluating failed; its reason and message go to stderr\n  \
        2  a usage error: bad arguments, or an input file that can't be read or parsed\n  \
        3  with --bool: the expression evaluated to false\n\n\
        Example:\n  \
        orrery-cel --bool --var combinedStatus=status.yaml \\\n    \
        --expr \"combinedStatus.results.exists(r, r.name == 'deployments-aggregator')\""
)]
struct Cli {
    /// The CEL expression.
    #[arg(long, short = 'e', allow_hyphen_values = true)]
    expr: String,

    /// A variable and the YAML or JSON file holding its value, as NAME=FILE;
    /// FILE `-` reads standard input. Repeat for more variables.
    #[arg(long = "var", short = 'v', value_name = "NAME=FILE", value_parser = parse_var)]
    vars: Vec<(String, String)>,

    /// Require a bool result: exit 0 for true and 3 for false.
    #[arg(long)]
    bool: bool,
}

fn parse_var(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_owned(), file.to_owned())),
        _ => Err(format!("expected NAME=FILE, got '{arg}'")),
    }
}

/// Reads a YAML or JSON document; JSON is tried first as it is the
/// stricter of the two.
fn read_value(file: &str, stdin_taken: &mut bool) -> anyhow::Result<Json> {
    let text = if file == "-" {
        if *stdin_taken {
            bail!("only one variable can read standard input");
        }
        *stdin_taken = true;
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    match serde_json::from_str(&text) {
        Ok(value) => Ok(value),
        Err(_) => serde_yaml::from_str(&text).with_context(|| format!("parsing {file} as YAML or JSON")),
    }
}

enum Failure {
    Usage(anyhow::Error),
    Cel(CelError),
}

fn run(cli: &Cli) -> Result<ExitCode, Failure> {
    let mut stdin_taken = false;
    let mut values = Vec::with_capacity(cli.vars.len());
    for (name, file) in &cli.vars {
        let value = read_value(file, &mut stdin_taken)
            .with_context(|| format!("variable {name}"))
            .map_err(Failure::Usage)?;
        values.push((name.as_str(), value));
    }
    let names: Vec<&str> = values.iter().map(|(name, _)| *name).collect();
    let expression = Expression::compile(&cli.expr, &names).map_err(Failure::Cel)?;
    let bindings: Vec<(&str, &Json)> = values.iter().map(|(name, value)| (*name, value)).collect();

    if cli.bool {
        let result = expression.evaluate_bool(&bindings).map_err(Failure::Cel)?;
        println!("{result}");
        return Ok(if result { ExitCode::SUCCESS } else { ExitCode::from(3) });
    }
    let result = expression.evaluate(&bindings).map_err(Failure::Cel)?;
    println!("{result}");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // clap exits with status 2 on a usage error.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(Failure::Usage(error)) => {
            eprintln!("orrery-cel: {error:#}");
            ExitCode::from(2)
        }
        Err(Failure::Cel(error)) => {
            eprintln!("{}: {error}", error.reason());
            ExitCode::from(1)
        }
    }
}
