//! Arbitrary bytes into the wire decoder, the same code (core/src/wire.rs) the extension module runs.
//! It must never panic, refuse only with the decoder errors services/README.md specifies (each at the
//! byte it names), and re-encode every frame it accepts to the same bytes, which decode the same again.
//! The layouts come from `protocol.py` through `Codec.describe()`: scripts/fuzz_wire.py writes them to
//! the file named by TRADEPLANE_WIRE_LAYOUTS.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/wire.rs"]
mod wire;

use wire::{Codec, Value, WireError, HEADER_SIZE};

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let path = std::env::var("TRADEPLANE_WIRE_LAYOUTS").expect(
            "TRADEPLANE_WIRE_LAYOUTS must name a file of Codec.describe() (scripts/fuzz_wire.py writes one)",
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        Codec::from_description(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
    })
}

/// The refusal is one the specification names, at the byte it names.
fn check_refusal(codec: &Codec, data: &[u8], error: &WireError) {
    assert!(!error.detail.is_empty(), "{error:?} explains nothing");
    let layout = || {
        data.get(2)
            .and_then(|&type_id| codec.layouts[type_id as usize].as_ref())
    };
    match error.reason {
        wire::MALFORMED_FRAME => {
            assert_eq!(error.offset, 0, "{error:?}");
            assert!(
                u16::from_le_bytes([data[0], data[1]]) < HEADER_SIZE as u16,
                "{error:?}"
            );
        }
        wire::TRUNCATED | wire::OVERSIZED => {
            assert!(
                error.offset <= data.len(),
                "{error:?} is past the frame's {} bytes",
                data.len()
            );
        }
        wire::UNKNOWN_TYPE => {
            assert_eq!(error.offset, 2, "{error:?}");
            assert!(layout().is_none(), "{error:?} but the type has a layout");
        }
        wire::WRONG_VERSION => {
            assert_eq!(error.offset, 3, "{error:?}");
            assert_ne!(data[3], codec.version, "{error:?} for this version");
        }
        wire::INVALID_FIELD => {
            let layout = layout().unwrap_or_else(|| panic!("{error:?} of a type without a layout"));
            let field = layout
                .fields
                .iter()
                .find(|field| field.offset == error.offset);
            let field = field.unwrap_or_else(|| panic!("{error:?} names no field's first byte"));
            assert!(
                field.offset + field.code.size() <= data.len(),
                "{error:?} past the frame"
            );
            assert!(
                error.detail.contains(&field.name),
                "{error:?} does not name {}",
                field.name
            );
        }
        other => panic!("{error:?}: reason {other} is no decoder error"),
    }
}

fuzz_target!(|data: &[u8]| {
    let codec = codec();
    let frame = match codec.decode(data) {
        Ok(frame) => frame,
        Err(error) => return check_refusal(codec, data, &error),
    };
    let values: Vec<Value> = (0..frame.layout.fields.len())
        .map(|index| frame.value(index))
        .collect();
    let mut encoded = Vec::new();
    frame
        .layout
        .encode_into(
            codec.version,
            frame.sequence,
            &values,
            frame.records(),
            &mut encoded,
        )
        .unwrap_or_else(|error| {
            panic!("an accepted {} does not encode: {error}", frame.layout.name)
        });
    assert_eq!(
        encoded, data,
        "an accepted {} re-encodes to other bytes",
        frame.layout.name
    );
    let again = codec
        .decode(&encoded)
        .unwrap_or_else(|error| panic!("a re-encoded {} is refused: {error:?}", frame.layout.name));
    let values_again: Vec<Value> = (0..again.layout.fields.len())
        .map(|index| again.value(index))
        .collect();
    assert_eq!(
        (again.layout.type_id, again.sequence),
        (frame.layout.type_id, frame.sequence)
    );
    assert_eq!(values_again, values);
    assert_eq!(again.records(), frame.records());
});
