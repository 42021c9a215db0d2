//! The fuzz targets in the test command: every corpus entry replayed (each failure ever found is
//! one), then a fixed-seed batch of mutated inputs per target, the same on every run.

use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn replay(target: &str) {
    let corpus = gantry_fuzz::corpus(target);
    assert!(!corpus.is_empty(), "{target} has no corpus");
    for (name, data) in corpus {
        let r = std::panic::catch_unwind(|| gantry_fuzz::run(target, &data));
        assert!(r.is_ok(), "{target}: corpus entry {name} fails");
    }
}

fn batch(target: &str, cases: u32) {
    let seed = [7u8; 32];
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let result = runner.run(&gantry_fuzz::strategy(target), |data| {
        gantry_fuzz::run(target, &data);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{target}: {e}");
    }
}

macro_rules! target {
    ($name:ident, $cases:expr) => {
        #[test]
        fn $name() {
            replay(stringify!($name));
            batch(stringify!($name), $cases);
        }
    };
}

target!(declarative, 300);
target!(admin_body, 2000);
target!(schema, 1000);
target!(cluster_frame, 1000);
target!(router, 1000);
target!(http1_head, 100);

/// The HTTP/1 harness reaches its upstream (so its checks see real traffic): two requests on
/// one connection, the open one and the key-auth one with its key, both arrive; without the
/// key, the second does not.
#[test]
fn the_http1_harness_reaches_its_upstream() {
    let before = gantry_fuzz::http1_upstream_requests();
    gantry_fuzz::run(
        "http1_head",
        b"GET /open HTTP/1.1\r\nHost: a\r\n\r\nGET /private HTTP/1.1\r\nHost: a\r\napikey: k3y\r\n\r\n",
    );
    let after = gantry_fuzz::http1_upstream_requests();
    gantry_fuzz::run("http1_head", b"GET /private HTTP/1.1\r\nHost: a\r\n\r\n");
    // Other tests of this binary may use the harness at the same time: at least ours arrived.
    assert!(after - before >= 2, "{before} -> {after}");
}
