//! `gantry-fuzz TARGET SECONDS`: run one fuzz target for as long as asked (outside the test
//! command), print how many inputs ran, and keep each failure, shrunk, in the corpus.
//! `gantry-fuzz TARGET --replay` runs the corpus alone.

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(how)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: gantry-fuzz TARGET SECONDS | TARGET --replay\ntargets: {}",
            gantry_fuzz::TARGETS.join(", ")
        );
        return std::process::ExitCode::from(2);
    };
    if !gantry_fuzz::TARGETS.contains(&target.as_str()) {
        eprintln!("no target {target}: {}", gantry_fuzz::TARGETS.join(", "));
        return std::process::ExitCode::from(2);
    }
    if how == "--replay" {
        for (name, data) in gantry_fuzz::corpus(target) {
            println!("{name}");
            gantry_fuzz::run(target, &data);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let Ok(seconds) = how.parse::<u64>() else {
        eprintln!("SECONDS must be a whole number, not {how}");
        return std::process::ExitCode::from(2);
    };
    // Panics are the failures the runner catches; their messages would drown the output.
    std::panic::set_hook(Box::new(|_| {}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let (mut inputs, mut failures, mut rounds) = (0u64, 0u64, 0u64);
    let strategy = gantry_fuzz::strategy(target);
    while std::time::Instant::now() < deadline {
        rounds += 1;
        let mut runner = TestRunner::new(Config {
            cases: 2_000,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        });
        let ran = std::sync::atomic::AtomicU64::new(0);
        let result = runner.run(&strategy, |data| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::panic::catch_unwind(|| gantry_fuzz::run(target, &data))
                .map_err(|_| TestCaseError::fail("panicked"))
        });
        inputs += ran.into_inner();
        if let Err(TestError::Fail(_, data)) = result {
            failures += 1;
            let msg = std::panic::catch_unwind(|| gantry_fuzz::run(target, &data))
                .err()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            match gantry_fuzz::keep(target, &data) {
                Ok(path) => println!("FAILURE kept in {}: {msg}", path.display()),
                Err(e) => println!("FAILURE (not kept: {e}): {msg}"),
            }
        }
    }
    println!(
        "{target}: {inputs} inputs (shrinking included) in {seconds} s, {rounds} rounds, {failures} failures, corpus of {}",
        gantry_fuzz::corpus(target).len()
    );
    if failures == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
