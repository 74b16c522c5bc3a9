//! How long keying one cacheable read costs: the statement key and the generation stamp that
//! every lookup computes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgrelay::cache::{cache_key, generation_stamp, Generations, KeyInput};

fn typical_read(c: &mut Criterion) {
    let settings: Vec<(String, String)> = [
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("client_encoding", "UTF8"),
        ("extra_float_digits", "3"),
        ("search_path", "\"$user\", public"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // Bind tail: one text parameter "12345", one text result column format.
    let bind: &[u8] = b"\0\x01\0\0\0\x01\0\0\0\x0512345\0\x01\0\0";
    let input = KeyInput {
        database: "shop",
        user: "app",
        settings: &settings,
        sql: "SELECT p.id, p.name, p.price, c.name FROM products p JOIN categories c ON c.id = p.category_id WHERE p.id = $1",
        param_formats_values_result_formats: bind,
    };
    let relations = vec!["categories".to_owned(), "products".to_owned()];
    let generations = Generations {
        database: 0x2f3a_9c41_77e0_1b2d,
        relations: vec![17, 4242],
    };

    c.bench_function("cache_key/typical_read", |b| {
        b.iter(|| cache_key(black_box(&input)))
    });
    let key = cache_key(&input);
    c.bench_function("generation_stamp/two_tables", |b| {
        b.iter(|| {
            generation_stamp(
                black_box(&key),
                black_box(&relations),
                black_box(&generations),
            )
        })
    });
}

criterion_group!(benches, typical_read);
criterion_main!(benches);
