use cel::{Context, Env};
use std::sync::Arc;

fn try_on_thread(name: &str, stack: usize, src: String) {
    let name = name.to_string(); let name2 = name.clone();
    let h = std::thread::Builder::new().stack_size(stack).spawn(move || {
        let env = Arc::new(Env::stdlib());
        let t = std::time::Instant::now();
        let p = env.compile(&src);
        let pt = t.elapsed();
        match p {
            Ok(p) => {
                let mut ctx = Context::with_env(env.clone());
                ctx.add_variable_from_value("a", 1i64);
                let t = std::time::Instant::now();
                let r = p.execute(&ctx);
                println!("{name}: parsed in {pt:?}, eval {:?} -> {:?}", t.elapsed(), r.map(|_| ()).map_err(|e| e.to_string()));
            }
            Err(e) => println!("{name}: parse err in {pt:?}: {}", e.to_string().chars().take(200).collect::<String>()),
        }
    }).unwrap();
    if h.join().is_err() { println!("{name2}: PANIC"); }
}

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(3000);
    let stack: usize = std::env::var("STACK_MB").map(|s| s.parse::<usize>().unwrap() << 20).unwrap_or(2 << 20);
    let src = match arg.as_str() {
        "plus" => format!("a{}", "+a".repeat(n)),
        "select" => format!("{{'b':1}}{}", ".b".repeat(n)),
        "index" => format!("a{}", "[0]".repeat(n)),
        "and" => format!("true{}", "&&true".repeat(n)),
        "parens" => format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        "lists" => format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        "neg" => format!("{}1", "-".repeat(n)),
        "not" => format!("{}true", "!".repeat(n)),
        "tern" => format!("{}1", "true ? 1 : ".repeat(n)),
        "calls" => format!("{}1{}", "int(".repeat(n), ")".repeat(n)),
        "offsets" => {
            let p = Env::stdlib().compile("'é' + b").unwrap();
            println!("{:?}", p.expression());
            for id in 0..10 { println!("{id} {:?}", p.source_info().offset_for(id)); }
            let e = Env::stdlib().compile("'éé' + ").unwrap_err();
            println!("{e}");
            return;
        }
        "regex" => {
            for pat in [r"\w{1000}", r"(a{100}){100}", r"[\p{L}]{500}", r"(\w+\s*){50}x", r"\w{100}\w{100}\w{100}"] {
                let t = std::time::Instant::now();
                let r = Env::stdlib().compile(&format!("'x'.matches(r'{pat}')")).unwrap().execute(&Context::default());
                println!("{pat}: {:?} {:?}", t.elapsed(), r.map(|_| ()).map_err(|e| e.to_string().chars().take(80).collect::<String>()));
            }
            return;
        }
        _ => panic!("?"),
    };
    try_on_thread(&arg, stack, src);
}
