use super::*;
use proptest::prelude::*;

fn status() -> impl Strategy<Value = ItemStatus> {
    prop_oneof![
        Just(ItemStatus::Pending),
        Just(ItemStatus::Assigned),
        Just(ItemStatus::Started),
        Just(ItemStatus::Completed),
        Just(ItemStatus::Failed),
        Just(ItemStatus::Abandoned),
    ]
}

/// Output values as robots may send them (within the depth limit).
fn output() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        status(),
        proptest::option::of(1i64..1_000),
        0i64..5,
        proptest::option::of("[0-9]{1,3}-[a-f0-9]{8}"),
        proptest::option::of(0i64..i64::MAX / 2),
        proptest::option::of(".{0,30}"),
        // A top-level `null` never reaches a slot: robots' `"output": null` reads as none.
        proptest::option::of(output().prop_filter("null is no output", |v| !v.is_null())),
        proptest::option::of(0i64..i64::MAX / 2),
    )
        .prop_map(
            |(status, robot, attempt, lease_id, expires, observation, output, ended)| Slot {
                status,
                robot,
                attempt,
                lease_id,
                lease_expires_at: expires,
                lease_expiries: attempt / 2,
                report_apart: observation.is_none() && attempt == 3,
                observation,
                output,
                fail_kind: (status == ItemStatus::Failed).then(|| "business".into()),
                not_before: None,
                started_at: ended.map(|e| e / 2),
                ended_at: ended,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_chunk_reads_back_as_written(slots in proptest::collection::vec(slot(), 1..40)) {
        let mut chunk = Chunk::new(3, 768, slots.len(), 1_000);
        chunk.slots = slots;
        let row = chunk.row().expect("row");
        let back = Chunk::try_from(ChunkRow {
            n: chunk.n,
            task: 3,
            first: 768,
            version: 0,
            created_at: 1_000,
            state: row["state"].as_str().expect("text").to_string(),
        })
        .expect("decodes");
        prop_assert_eq!(back.states().collect::<Vec<_>>(), chunk.states().collect::<Vec<_>>());
        let held = chunk.slots.iter().filter(|s| s.in_flight()).count();
        prop_assert_eq!(row["in_flight"].as_u64(), Some(held as u64));
        let counts = chunk.counts();
        let total = counts.pending + counts.assigned + counts.started + counts.completed
            + counts.failed + counts.abandoned;
        prop_assert_eq!(total, chunk.slots.len() as i64);
    }
}
