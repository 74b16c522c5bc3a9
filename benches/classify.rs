//! Cost of classifying typical OLTP statements: uncached (lex + fast path + sqlparser + tree
//! walk, what every new statement text pays) and cached (a `ClassifyCache` hit, what a repeated
//! or prepared statement pays). Reported in ns per statement.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pgrelay::router::classify::{classify, ClassifyCache, FunctionCatalog};

/// (name, statement): the mix a web application sends, plus the forms the fast path decides.
const STATEMENTS: &[(&str, &str)] = &[
    ("begin", "BEGIN"),
    ("commit", "COMMIT"),
    ("set_search_path", "SET search_path TO public, app"),
    (
        "select_pk",
        "SELECT id, name, email FROM users WHERE id = $1",
    ),
    (
        "select_join_order_limit",
        "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
         WHERE o.status = $1 AND o.created_at > $2 ORDER BY o.created_at DESC LIMIT 20",
    ),
    (
        "select_for_update",
        "SELECT * FROM accounts WHERE id = $1 FOR UPDATE",
    ),
    (
        "select_for_no_key_update",
        "SELECT * FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
    ),
    (
        "insert_upsert_returning",
        "INSERT INTO carts (user_id, item_id, qty) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, item_id) DO UPDATE SET qty = carts.qty + EXCLUDED.qty RETURNING id",
    ),
    (
        "update_pk",
        "UPDATE users SET name = $1, updated_at = now() WHERE id = $2",
    ),
    (
        "delete_expired",
        "DELETE FROM sessions WHERE expires_at < now()",
    ),
    (
        "writable_cte",
        "WITH moved AS (DELETE FROM queue WHERE id = ANY($1) RETURNING *) \
         INSERT INTO done (id, payload) SELECT id, payload FROM moved",
    ),
    (
        "hinted_select",
        "/* pgrelay: replica, cache ttl=30s */ SELECT * FROM products WHERE sku = $1",
    ),
    (
        "tx_batch",
        "BEGIN; UPDATE accounts SET balance = balance - $1 WHERE id = $2; COMMIT",
    ),
];

fn catalog() -> FunctionCatalog {
    FunctionCatalog::new(
        &["audit_log".to_string()],
        (0..200).map(|i| format!("app.user_fn_{i}")),
    )
}

fn uncached(c: &mut Criterion) {
    let catalog = catalog();
    let mut group = c.benchmark_group("classify_uncached");
    for (name, sql) in STATEMENTS {
        group.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
            b.iter(|| classify(black_box(sql), &catalog))
        });
    }
    group.finish();
}

fn cached(c: &mut Criterion) {
    let catalog = catalog();
    let cache = ClassifyCache::new(4096);
    for (_, sql) in STATEMENTS {
        cache.classify(sql, &catalog);
    }
    let mut group = c.benchmark_group("classify_cached");
    for (name, sql) in STATEMENTS {
        group.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
            b.iter(|| cache.classify(black_box(sql), &catalog))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = uncached, cached
}
criterion_main!(benches);
