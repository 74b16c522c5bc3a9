//! Framing cost on the hot path: splitting client messages into frames, and walking the
//! headers of a server read full of DataRows the way the session does (header only, bytes
//! forwarded untouched).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgrelay::protocol::frame::{peek_header, split_frame};

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A DataRow of `columns` text values of `width` bytes each.
fn data_row(columns: usize, width: usize) -> Vec<u8> {
    let mut body = (columns as i16).to_be_bytes().to_vec();
    for _ in 0..columns {
        body.extend_from_slice(&(width as i32).to_be_bytes());
        body.extend(std::iter::repeat_n(b'x', width));
    }
    message(b'D', &body)
}

fn bench_server_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_scan");
    for (columns, width) in [(2usize, 8usize), (8, 32), (4, 1024)] {
        let row = data_row(columns, width);
        let mut chunk = Vec::new();
        while chunk.len() + row.len() <= 64 * 1024 {
            chunk.extend_from_slice(&row);
        }
        let rows = chunk.len() / row.len();
        group.throughput(Throughput::Bytes(chunk.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("datarows_64k", format!("{columns}x{width}B ({rows} rows)")),
            &chunk,
            |b, chunk| {
                b.iter(|| {
                    let mut at = 0;
                    let mut seen = 0;
                    while let Ok(Some(h)) = peek_header(chunk, at, 1 << 30) {
                        if at + h.total_len > chunk.len() {
                            break;
                        }
                        at += h.total_len;
                        seen += 1;
                    }
                    std::hint::black_box(seen)
                })
            },
        );
    }
    group.finish();
}

fn bench_client_split(c: &mut Criterion) {
    let mut pipeline = Vec::new();
    let mut bind = b"\0pgrelay_stmt\0\0\0\0\x01\0\0\0\x0442\0\0\0".to_vec();
    bind.truncate(bind.len() - 1);
    for _ in 0..100 {
        pipeline.extend(message(b'B', &bind));
        pipeline.extend(message(b'E', b"\0\0\0\0\0"));
        pipeline.extend(message(b'S', b""));
    }
    let mut group = c.benchmark_group("client_split");
    group.throughput(Throughput::Elements(300));
    group.bench_function("bind_execute_sync_x100", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&pipeline[..]);
            let mut n = 0;
            while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 30) {
                n += frame.bytes.len();
            }
            std::hint::black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_server_scan, bench_client_split);
criterion_main!(benches);
