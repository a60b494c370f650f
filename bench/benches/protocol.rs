//! Frame parse and event encode: the per-message protocol work.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_protocol::{event, FrameParser};

fn publish_frame(payload: usize) -> Vec<u8> {
    let text = "x".repeat(payload);
    format!(r#"{{"action":"publish","channel":"chat:lobby","data":{{"text":"{text}","n":42}},"userId":"alice","ref":7}}"#)
        .into_bytes()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_parse");
    for payload in [64usize, 512, 4096] {
        let frame = publish_frame(payload);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("publish", payload), &frame, |b, frame| {
            let mut parser = FrameParser::new();
            b.iter(|| {
                let parsed = parser.parse(black_box(frame));
                black_box(parsed.is_ok())
            })
        });
    }
    let subscribe = br#"{"action":"subscribe","channel":"chat:lobby","lastEventId":41}"#;
    group.bench_function("subscribe", |b| {
        let mut parser = FrameParser::new();
        b.iter(|| black_box(parser.parse(black_box(subscribe)).is_ok()))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_encode");
    for payload in [64usize, 512, 4096] {
        let data = format!(r#"{{"text":"{}","n":42}}"#, "x".repeat(payload));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("realtime.message", payload),
            &data,
            |b, data| {
                b.iter(|| {
                    event::message(
                        "chat:lobby",
                        black_box(data.as_bytes()),
                        Some("alice"),
                        43,
                        1_710_000_000_000,
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
