//! Register codecs: every value type in every word order survives encode then decode,
//! edge values included; scale and offset; and the errors a bad value or reply gives.

use labgate::modbus::value::{
    Decoded, ValueError, ValueType, WordOrder, bit_mask, decode, encode, scale, unscale,
};

const ORDERS: [WordOrder; 4] = [
    WordOrder::ABCD,
    WordOrder::CDAB,
    WordOrder::BADC,
    WordOrder::DCBA,
];

fn edges(ty: ValueType) -> Vec<f64> {
    match ty {
        ValueType::U16 => vec![0.0, 1.0, 255.0, 256.0, 32768.0, 65535.0],
        ValueType::I16 => vec![-32768.0, -1.0, 0.0, 1.0, 255.0, 32767.0],
        ValueType::U32 => vec![0.0, 1.0, 65535.0, 65536.0, 2147483648.0, 4294967295.0],
        ValueType::I32 => vec![-2147483648.0, -65536.0, -1.0, 0.0, 65537.0, 2147483647.0],
        ValueType::U64 => vec![
            0.0,
            1.0,
            4294967296.0,
            9007199254740992.0,
            (u64::MAX - 2047) as f64,
        ],
        ValueType::I64 => vec![
            -9223372036854775808.0,
            -9007199254740992.0,
            -1.0,
            0.0,
            9007199254740992.0,
            9.223372036854774e18,
        ],
        ValueType::F32 => vec![
            0.0,
            -0.0,
            1.5,
            -273.15f32 as f64,
            f32::MAX as f64,
            f32::MIN_POSITIVE as f64,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ],
        ValueType::F64 => vec![
            0.0,
            -1.25,
            std::f64::consts::PI,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NEG_INFINITY,
        ],
        _ => vec![],
    }
}

#[test]
fn every_numeric_type_round_trips_in_every_order() {
    for ty in [
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::U64,
        ValueType::I64,
        ValueType::F32,
        ValueType::F64,
    ] {
        for order in ORDERS {
            for v in edges(ty) {
                let regs = encode(&Decoded::Number(v), ty, order, None)
                    .unwrap_or_else(|e| panic!("encode {v} as {ty} {order}: {e}"));
                assert_eq!(regs.len(), usize::from(ty.registers(None)), "{ty}");
                let back = decode(&regs, ty, order, None)
                    .unwrap_or_else(|e| panic!("decode {regs:?} as {ty} {order}: {e}"));
                // A float32 comes back as the decimal it holds (-273.15, not the f32's exact
                // -273.149993896484375), which is the same f32 again.
                let want = if ty == ValueType::F32 {
                    let f = v as f32;
                    assert_eq!(f64::from(f), v, "edge values are exact f32s");
                    f.to_string().parse::<f64>().unwrap()
                } else {
                    v
                };
                match back {
                    Decoded::Number(b) => assert!(
                        b == want
                            && b.is_sign_negative() == v.is_sign_negative()
                            && (ty != ValueType::F32 || b as f32 == v as f32),
                        "{ty} {order}: {v} came back as {b}"
                    ),
                    other => panic!("{ty}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn nan_survives_float_types() {
    for order in ORDERS {
        for ty in [ValueType::F32, ValueType::F64] {
            let regs = encode(&Decoded::Number(f64::NAN), ty, order, None).unwrap();
            match decode(&regs, ty, order, None) {
                Ok(Decoded::Number(v)) => assert!(v.is_nan()),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn word_orders_put_bytes_where_their_names_say() {
    // 0x01020304 as u32.
    let v = Decoded::Number(16909060.0);
    let expect = [
        (WordOrder::ABCD, [0x0102, 0x0304]),
        (WordOrder::CDAB, [0x0304, 0x0102]),
        (WordOrder::BADC, [0x0201, 0x0403]),
        (WordOrder::DCBA, [0x0403, 0x0201]),
    ];
    for (order, regs) in expect {
        assert_eq!(
            encode(&v, ValueType::U32, order, None).unwrap(),
            regs,
            "{order}"
        );
    }
    // 0x0012_3456_789A_BCDE as u64 (below 2^53, so exact in f64): CDAB reverses all four words.
    let v = Decoded::Number(0x0012_3456_789A_BCDEu64 as f64);
    assert_eq!(
        encode(&v, ValueType::U64, WordOrder::CDAB, None).unwrap(),
        [0xBCDE, 0x789A, 0x3456, 0x0012]
    );
    assert_eq!(
        encode(&v, ValueType::U64, WordOrder::BADC, None).unwrap(),
        [0x1200, 0x5634, 0x9A78, 0xDEBC]
    );
    assert_eq!(
        encode(&v, ValueType::U64, WordOrder::DCBA, None).unwrap(),
        [0xDEBC, 0x9A78, 0x5634, 0x1200]
    );
    // Above 2^53 a u64 counter loses its lowest bits in f64, as documented.
    assert_eq!(
        decode(&[0x0020, 0, 0, 1], ValueType::U64, WordOrder::ABCD, None),
        Ok(Decoded::Number(9007199254740992.0))
    );
    // 16-bit values ignore the order: Modbus sends every register high byte first.
    for order in ORDERS {
        assert_eq!(
            encode(&Decoded::Number(258.0), ValueType::U16, order, None).unwrap(),
            [0x0102]
        );
    }
}

#[test]
fn bools_bits_and_strings() {
    for order in ORDERS {
        for b in [false, true] {
            let regs = encode(&Decoded::Bool(b), ValueType::Bool, order, None).unwrap();
            assert_eq!(
                decode(&regs, ValueType::Bool, order, None),
                Ok(Decoded::Bool(b))
            );
        }
        assert_eq!(
            decode(&[0x8001], ValueType::Bit, order, Some(15)),
            Ok(Decoded::Bool(true))
        );
        assert_eq!(
            decode(&[0x8001], ValueType::Bit, order, Some(14)),
            Ok(Decoded::Bool(false))
        );
        let regs = encode(
            &Decoded::Text("F4T-1".into()),
            ValueType::String,
            order,
            Some(4),
        )
        .unwrap();
        assert_eq!(regs, [0x4634, 0x542D, 0x3100, 0x0000]);
        assert_eq!(
            decode(&regs, ValueType::String, order, None),
            Ok(Decoded::Text("F4T-1".into()))
        );
    }
    // Trailing spaces are padding too; leading ones are kept.
    assert_eq!(
        decode(&[0x2041, 0x2020], ValueType::String, WordOrder::ABCD, None),
        Ok(Decoded::Text(" A".into()))
    );
    assert_eq!(ValueType::String.registers(Some(8)), 8);
    assert_eq!(ValueType::Bit.registers(None), 1);
    assert_eq!(ValueType::F64.registers(None), 4);
    assert_eq!(bit_mask(3, true), Ok((0xFFF7, 0x0008)));
    assert_eq!(bit_mask(3, false), Ok((0xFFF7, 0x0000)));
    assert!(bit_mask(16, true).is_err());
}

#[test]
fn scale_and_offset() {
    // Eurotherm one-decimal values: 1234 -> 123.4.
    assert!((scale(1234.0, Some(0.1), None) - 123.4).abs() < 1e-9);
    assert_eq!(scale(5.0, None, None), 5.0);
    assert_eq!(scale(100.0, Some(0.5), Some(-40.0)), 10.0);
    for (v, s, o) in [
        (123.4, Some(0.1), None),
        (10.0, Some(0.5), Some(-40.0)),
        (7.0, None, None),
    ] {
        let raw = unscale(v, s, o);
        assert!((scale(raw, s, o) - v).abs() < 1e-9);
    }
    // An unscaled engineering value rounds to the nearest raw integer when written.
    let raw = unscale(123.4, Some(0.1), None);
    assert_eq!(
        encode(&Decoded::Number(raw), ValueType::I16, WordOrder::ABCD, None),
        Ok(vec![1234])
    );
    // A zero scale cannot be inverted: the write is refused, not sent as garbage.
    let raw = unscale(1.0, Some(0.0), None);
    assert!(encode(&Decoded::Number(raw), ValueType::U16, WordOrder::ABCD, None).is_err());
}

#[test]
fn errors_name_the_type_and_value() {
    let err = encode(
        &Decoded::Number(70000.0),
        ValueType::U16,
        WordOrder::ABCD,
        None,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "70000 does not fit in u16");
    for (v, ty) in [
        (-1.0, ValueType::U16),
        (32768.0, ValueType::I16),
        (-32769.0, ValueType::I16),
        (4294967296.0, ValueType::U32),
        (2147483648.0, ValueType::I32),
        (-0.6, ValueType::U32),
        (1.8446744073709552e19, ValueType::U64),
        (2f64.powi(63), ValueType::I64),
        (1e39, ValueType::F32),
        (2.0, ValueType::Bool),
    ] {
        let r = encode(&Decoded::Number(v), ty, WordOrder::ABCD, None);
        assert!(
            matches!(r, Err(ValueError::OutOfRange { .. })),
            "{v} as {ty}: {r:?}"
        );
    }
    let err = encode(
        &Decoded::Number(f64::NAN),
        ValueType::I16,
        WordOrder::ABCD,
        None,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        ValueError::NotFinite {
            ty: ValueType::I16,
            ..
        }
    ));
    assert!(err.to_string().contains("i16"), "{err}");

    let err = decode(&[1], ValueType::F32, WordOrder::CDAB, None).unwrap_err();
    assert_eq!(err.to_string(), "f32 needs 2 register(s), got 1");
    assert!(matches!(
        decode(&[0x41C3], ValueType::String, WordOrder::ABCD, None),
        Err(ValueError::NotAscii {
            byte: 0xC3,
            position: 1,
            ..
        })
    ));
    assert!(matches!(
        encode(
            &Decoded::Text("température".into()),
            ValueType::String,
            WordOrder::ABCD,
            None
        ),
        Err(ValueError::NotAscii { .. })
    ));
    assert!(matches!(
        encode(
            &Decoded::Text("toolong".into()),
            ValueType::String,
            WordOrder::ABCD,
            Some(2)
        ),
        Err(ValueError::TextTooLong {
            chars: 7,
            registers: 2
        })
    ));
    assert!(matches!(
        encode(
            &Decoded::Text("1".into()),
            ValueType::U16,
            WordOrder::ABCD,
            None
        ),
        Err(ValueError::WrongKind { .. })
    ));
    assert_eq!(
        decode(&[1], ValueType::Bit, WordOrder::ABCD, None),
        Err(ValueError::BadBit(None))
    );
    assert_eq!(
        decode(&[1], ValueType::Bit, WordOrder::ABCD, Some(16)),
        Err(ValueError::BadBit(Some(16)))
    );
    assert_eq!(
        encode(&Decoded::Bool(true), ValueType::Bit, WordOrder::ABCD, None),
        Err(ValueError::BitNeedsMask)
    );
}
