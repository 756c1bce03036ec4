use cel::{Context, Env};
use std::sync::Arc;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(3000);
    let stack: usize = std::env::var("STACK_MB").map(|s| s.parse::<usize>().unwrap() << 20).unwrap_or(2 << 20);
    let src = match arg.as_str() {
        "plus" => format!("a{}", "+a".repeat(n)),
        "parens" => format!("{}a{}", "(".repeat(n), ")".repeat(n)),
        "lists" => format!("{}a{}", "[".repeat(n), "]".repeat(n)),
        "calls" => format!("{}a{}", "int(".repeat(n), ")".repeat(n)),
        "exists" => format!("{}true{}", "[1].exists(x,".repeat(n), ")".repeat(n)),
        "select" => format!("m{}", ".b".repeat(n)),
        _ => panic!(),
    };
    let env = Arc::new(Env::stdlib());
    let e2 = env.clone();
    let p = std::thread::Builder::new().stack_size(1 << 30).spawn(move || e2.compile(&src).unwrap()).unwrap().join().unwrap();
    let p = Arc::new(p);
    let p2 = p.clone();
    let h = std::thread::Builder::new().stack_size(stack).spawn(move || {
        let mut ctx = Context::with_env(env.clone());
        ctx.add_variable_from_value("a", 1i64);
        let mut m = std::collections::HashMap::new();
        m.insert("b".to_string(), 1i64);
        ctx.add_variable_from_value("m", m);
        let r = p2.execute(&ctx);
        println!("{arg} {n}: eval -> {:?}", r.map(|_| ()).map_err(|e| e.to_string().chars().take(60).collect::<String>()));
    }).unwrap();
    let _ = h.join();
    // drop the program on a big stack
    std::thread::Builder::new().stack_size(1 << 30).spawn(move || drop(p)).unwrap().join().unwrap();
}
