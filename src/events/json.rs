//! Compact JSON for the logger's hot path: serde_json's bytes, written faster.
//!
//! [`write`] gives exactly what `serde_json::to_writer` gives. It copies a string that
//! needs no escaping whole, where serde_json looks up each byte on its own (a third of the
//! logger's serialising was that loop), and writes struct fields without serde_json's
//! map-key machinery. Whatever it does not handle itself (byte strings, 128-bit numbers,
//! map keys that are not strings, serde_json's own raw values) makes it hand the whole
//! value to serde_json instead, so the two can never differ. [`write_str`] and
//! [`write_u64`] are its strings and numbers, for the records laid out by hand
//! (`record::write_record_line`).

use serde::Serialize;
use serde::ser::{self, Impossible};

/// Appends `value` as compact JSON to `out`, byte for byte what `serde_json::to_writer`
/// appends; on an error `out` is as it was.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    let start = out.len();
    match value.serialize(Writer { out: &mut *out }) {
        Ok(()) => Ok(()),
        Err(Unsupported) => {
            out.truncate(start);
            let result = serde_json::to_writer(&mut *out, value);
            if result.is_err() {
                out.truncate(start);
            }
            result
        }
    }
}

/// Writes `s` as a JSON string, as serde_json does.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        escape_into(out, s);
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether `bytes` hold a `"`, a `\` or a control character, eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each byte of `w` that is zero (exact for "is any byte zero"), or
    // below 0x20.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let below_space = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        if below_space(w) | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// serde_json's escaping: `"`, `\` and the control characters, the usual ones by their
/// short form and the rest as `\u00XX`; everything else (non-ASCII, DEL) as it is.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[run..i]);
        run = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&s.as_bytes()[run..]);
    out.push(b'"');
}

/// Something [`Writer`] leaves to serde_json (or an error of the value's own, which
/// serde_json then reports).
#[derive(Debug)]
struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

/// Names serde_json gives the structs it writes in its own way (raw values, arbitrary
/// precision numbers).
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

/// Writes `n` in decimal (what `write!` does, without the formatting machinery).
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let (digits, at) = decimal(n, 1);
    out.extend_from_slice(&digits[at..]);
}

/// `n` in decimal, zero-padded to at least `width` digits (at most 20): the digits are
/// `buf[at..]` of the returned `(buf, at)`.
pub fn decimal(mut n: u64, width: usize) -> ([u8; 20], usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (digits, at.min(digits.len() - width.min(digits.len())))
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        push_i64(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        write_u64(self.out, v);
        Ok(())
    }
    // Floats are written by serde_json itself: its shortest round-trip form, null for
    // the non-finite.
    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        serde_json::to_writer(&mut *self.out, &v).map_err(|_| Unsupported)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        serde_json::to_writer(&mut *self.out, &v).map_err(|_| Unsupported)
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(Unsupported);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(Writer {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Unsupported> {
        self.out.push(b'[');
        Ok(Compound::new(self.out, b"]"))
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(Compound::new(self.out, b"]}"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Unsupported> {
        self.out.push(b'{');
        Ok(Compound::new(self.out, b"}"))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, Unsupported> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(Unsupported);
        }
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Unsupported> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.extend_from_slice(b":{");
        Ok(Compound::new(self.out, b"}}"))
    }
}

/// An array or object being written: a comma before every element but the first.
struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    end: &'static [u8],
}

impl<'a> Compound<'a> {
    fn new(out: &'a mut Vec<u8>, end: &'static [u8]) -> Compound<'a> {
        Compound {
            out,
            first: true,
            end,
        }
    }

    fn comma(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.comma();
        value.serialize(Writer {
            out: &mut *self.out,
        })
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.comma();
        write_str(self.out, key);
        self.out.push(b':');
        value.serialize(Writer {
            out: &mut *self.out,
        })
    }

    fn close(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(self.end);
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.element(value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.comma();
        key.serialize(Key {
            out: &mut *self.out,
        })?;
        self.out.push(b':');
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        value.serialize(Writer {
            out: &mut *self.out,
        })
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.close()
    }
}

/// A map key: a string (anything else, which serde_json quotes or refuses, is left to
/// serde_json).
struct Key<'a> {
    out: &'a mut Vec<u8>,
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(Unsupported);
        }
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_i8(self, _: i8) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_i16(self, _: i16) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_i32(self, _: i32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_i64(self, _: i64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_u8(self, _: u8) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_u16(self, _: u16) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_u32(self, _: u32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_u64(self, _: u64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_char(self, _: char) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same<T: Serialize + ?Sized + std::fmt::Debug>(value: &T) {
        let mut out = b"before ".to_vec();
        write(&mut out, value).unwrap();
        let mut expected = b"before ".to_vec();
        serde_json::to_writer(&mut expected, value).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "{value:?}"
        );
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_296, u64::MAX] {
            let mut line = Vec::new();
            write_u64(&mut line, n);
            assert_eq!(line, n.to_string().into_bytes());
        }
        for (n, width, text) in [
            (7, 6, "000007"),
            (123_456, 6, "123456"),
            (0, 1, "0"),
            (42, 0, "42"),
        ] {
            let (digits, at) = decimal(n, width);
            assert_eq!(&digits[at..], text.as_bytes());
        }
    }

    #[test]
    fn a_byte_to_escape_is_found_wherever_it_is() {
        for len in 0..40 {
            let plain = "é".repeat(len / 2) + &"a".repeat(len % 2);
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for b in (0u8..0x20).chain([b'"', b'\\']) {
                for at in 0..plain.len() {
                    let mut bytes = plain.as_bytes().to_vec();
                    bytes[at] = b;
                    assert!(needs_escape(&bytes), "{b:#x} at {at} of {len}");
                }
            }
            for b in (0x20u8..=0xff).filter(|&b| b != b'"' && b != b'\\') {
                let mut bytes = plain.as_bytes().to_vec();
                bytes.push(b);
                assert!(!needs_escape(&bytes), "{b:#x} after {len}");
            }
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let long = format!("{}\"{}", "x".repeat(100), "y".repeat(50));
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "0192f5e0-7c3a-7bb1-9a4e-1f2d3c4b5a69",
            "a\"b",
            "back\\slash",
            "\n\t\r\u{8}\u{c}\u{0}\u{1f}",
            &every_control,
            "\u{7f} is not escaped, nor / nor '",
            "héllo ✓ 🦀",
            &long,
        ] {
            same(s);
        }
    }

    #[derive(Debug, Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        Struct { a: Option<u32>, b: Vec<bool> },
    }

    #[derive(Debug, Serialize)]
    struct Wrapper(char);

    #[test]
    fn values_of_every_kind_are_written_as_serde_json_writes_them() {
        same(&json!({
            "nested": {"a": [1, -2, 3.5, 1e300, -0.0, null, true, false], "b": {}},
            "empty": [],
            "keys \"quoted\"\n": "v",
            "big": u64::MAX,
            "small": i64::MIN,
        }));
        same(&(
            1u8,
            -1i16,
            70_000u32,
            -5i64,
            'c',
            "t",
            (),
            Some(2.5f32),
            None::<u8>,
        ));
        same(&[f64::NAN, f64::INFINITY, 0.1 + 0.2]);
        same(&vec![
            Shape::Unit,
            Shape::Newtype(7),
            Shape::Tuple(-3, "x\"y".into()),
        ]);
        same(&Shape::Struct {
            a: None,
            b: vec![true],
        });
        same(&Wrapper('"'));
        let mut by_number = std::collections::BTreeMap::new();
        by_number.insert(3u32, "three");
        by_number.insert(10u32, "ten");
        same(&by_number);
        let raw = serde_json::value::RawValue::from_string("{\"raw\": [1, 2]}".into()).unwrap();
        same(&json!({"x": 1}));
        same(&raw);
        same(&(1, &raw));
    }

    #[test]
    fn an_error_leaves_the_output_as_it_was() {
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let mut out = b"kept".to_vec();
        assert!(write(&mut out, &bad).is_err());
        assert!(serde_json::to_vec(&bad).is_err());
        assert_eq!(out, b"kept");
    }

    #[test]
    fn events_are_written_as_serde_json_writes_them() {
        use crate::events::MapReduceEvent;
        let hostile = "item \"7\"\n\u{1}\\ ✓";
        same(&MapReduceEvent::AgentCompleted {
            job_id: "j".into(),
            agent_id: hostile.into(),
            item_id: hostile.into(),
            duration_ms: 12,
            commits: vec!["abc".into(), hostile.into()],
            json_log_location: Some("/tmp/x".into()),
            attempt: Some(2),
            output: Some(hostile.into()),
        });
        same(&MapReduceEvent::AgentProgress {
            job_id: "j".into(),
            agent_id: "a".into(),
            item_id: "i".into(),
            step: hostile.into(),
            progress_pct: 33.3,
        });
        same(&MapReduceEvent::JobStarted {
            job_id: "j".into(),
            config: json!({"max_parallel": 8, "nested": {"x": [true]}}),
            total_items: 3,
            timestamp: "2026-12-07T00:00:00.000000Z".into(),
        });
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(value in json_value()) {
            let mut out = Vec::new();
            write(&mut out, &value).unwrap();
            proptest::prop_assert_eq!(out, serde_json::to_vec(&value).unwrap());
        }
    }
}
