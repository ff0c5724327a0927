//! The wire format without Python: field codes, frame headers, field rules and the errors a decoder
//! names. `services/README.md` specifies the format; `protocol.py` declares each layout once and hands
//! the declarations to this module.

use std::fmt::Write;

pub const HEADER_SIZE: usize = 12;
pub const MAX_FRAME_SIZE: usize = 0xFFFF;

// Reason codes of the protocol (protocol.Reason).
pub const MALFORMED_FRAME: u8 = 1;
pub const TRUNCATED: u8 = 2;
pub const OVERSIZED: u8 = 3;
pub const UNKNOWN_TYPE: u8 = 4;
pub const WRONG_VERSION: u8 = 5;
pub const INVALID_FIELD: u8 = 6;

/// A refused frame: why (a Reason code), where (byte offset in the frame) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub reason: u8,
    pub offset: usize,
    pub detail: String,
}

impl WireError {
    pub fn new(reason: u8, offset: usize, detail: String) -> Self {
        WireError {
            reason,
            offset,
            detail,
        }
    }
}

/// One packed field: a little-endian integer or a fixed number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    Bytes(usize),
}

impl Code {
    pub fn size(self) -> usize {
        match self {
            Code::U8 | Code::I8 => 1,
            Code::U16 | Code::I16 => 2,
            Code::U32 | Code::I32 => 4,
            Code::U64 | Code::I64 => 8,
            Code::Bytes(width) => width,
        }
    }

    /// The smallest and largest integer the field holds (bytes fields: none).
    pub fn bounds(self) -> Option<(i128, i128)> {
        match self {
            Code::U8 => Some((0, u8::MAX as i128)),
            Code::U16 => Some((0, u16::MAX as i128)),
            Code::U32 => Some((0, u32::MAX as i128)),
            Code::U64 => Some((0, u64::MAX as i128)),
            Code::I8 => Some((i8::MIN as i128, i8::MAX as i128)),
            Code::I16 => Some((i16::MIN as i128, i16::MAX as i128)),
            Code::I32 => Some((i32::MIN as i128, i32::MAX as i128)),
            Code::I64 => Some((i64::MIN as i128, i64::MAX as i128)),
            Code::Bytes(_) => None,
        }
    }

    /// The integer at the start of `raw` (which holds at least `size()` bytes).
    pub fn read_int(self, raw: &[u8]) -> i128 {
        match self {
            Code::U8 => raw[0] as i128,
            Code::I8 => raw[0] as i8 as i128,
            Code::U16 => u16::from_le_bytes([raw[0], raw[1]]) as i128,
            Code::I16 => i16::from_le_bytes([raw[0], raw[1]]) as i128,
            Code::U32 => u32::from_le_bytes(raw[..4].try_into().unwrap()) as i128,
            Code::I32 => i32::from_le_bytes(raw[..4].try_into().unwrap()) as i128,
            Code::U64 => u64::from_le_bytes(raw[..8].try_into().unwrap()) as i128,
            Code::I64 => i64::from_le_bytes(raw[..8].try_into().unwrap()) as i128,
            Code::Bytes(_) => 0,
        }
    }

    /// Writes `value` (already within `bounds()`) little-endian at the start of `out`.
    pub fn write_int(self, value: i128, out: &mut [u8]) {
        let size = self.size();
        out[..size].copy_from_slice(&value.to_le_bytes()[..size]);
    }

    /// The code as Python's struct module spells it ("Q", "8s"), which `parse_codes` reads back.
    pub fn letters(self) -> String {
        match self {
            Code::U8 => "B".to_owned(),
            Code::U16 => "H".to_owned(),
            Code::U32 => "I".to_owned(),
            Code::U64 => "Q".to_owned(),
            Code::I8 => "b".to_owned(),
            Code::I16 => "h".to_owned(),
            Code::I32 => "i".to_owned(),
            Code::I64 => "q".to_owned(),
            Code::Bytes(width) => format!("{width}s"),
        }
    }
}

/// The struct codes of a body ("QI8sBB..."), as Python's struct module spells them.
pub fn parse_codes(format: &str) -> Result<Vec<Code>, String> {
    let mut codes = Vec::new();
    let mut count = String::new();
    for letter in format.chars() {
        if letter.is_ascii_digit() {
            count.push(letter);
            continue;
        }
        let repeat: usize = if count.is_empty() {
            1
        } else {
            count
                .parse()
                .map_err(|_| format!("bad count in {format:?}"))?
        };
        count.clear();
        let code = match letter {
            'B' => Code::U8,
            'H' => Code::U16,
            'I' => Code::U32,
            'Q' => Code::U64,
            'b' => Code::I8,
            'h' => Code::I16,
            'i' => Code::I32,
            'q' => Code::I64,
            's' => {
                codes.push(Code::Bytes(repeat));
                continue;
            }
            other => {
                return Err(format!(
                    "struct code {other:?} in {format:?} is not a wire field"
                ))
            }
        };
        codes.extend(std::iter::repeat(code).take(repeat));
    }
    Ok(codes)
}

/// What a field must hold to be accepted.
#[derive(Debug, Clone)]
pub enum Rule {
    /// One of these integers (an enum's members).
    OneOf(Vec<i128>),
    /// Strictly greater than this integer.
    Above(i128),
    /// Text: a first character of `first`, at most `longest - 1` more of `rest`, then only NUL bytes.
    PaddedText {
        first: [bool; 256],
        rest: [bool; 256],
        longest: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i128),
    Bytes(&'a [u8]),
}

impl Rule {
    pub fn padded_text(first: &[u8], rest: &[u8], longest: usize) -> Rule {
        let mut first_set = [false; 256];
        let mut rest_set = [false; 256];
        for &byte in first {
            first_set[byte as usize] = true;
        }
        for &byte in rest {
            rest_set[byte as usize] = true;
        }
        Rule::PaddedText {
            first: first_set,
            rest: rest_set,
            longest,
        }
    }

    pub fn accepts(&self, value: &Value) -> bool {
        match (self, value) {
            (Rule::OneOf(members), Value::Int(number)) => members.contains(number),
            (Rule::Above(bound), Value::Int(number)) => number > bound,
            (
                Rule::PaddedText {
                    first,
                    rest,
                    longest,
                },
                Value::Bytes(text),
            ) => {
                let Some((&head, tail)) = text.split_first() else {
                    return false;
                };
                if !first[head as usize] {
                    return false;
                }
                let characters = tail
                    .iter()
                    .take(longest.saturating_sub(1))
                    .take_while(|&&b| rest[b as usize])
                    .count();
                tail[characters..].iter().all(|&b| b == 0)
            }
            _ => false,
        }
    }

    /// The rule as one line of text without tabs, which `Rule::from_description` reads back.
    pub fn describe(&self) -> String {
        let members = |set: &[bool; 256]| -> String {
            (0..=255u8)
                .filter(|&byte| set[byte as usize])
                .map(|byte| format!("{byte:02x}"))
                .collect()
        };
        match self {
            Rule::OneOf(members) => {
                let listed: Vec<String> = members.iter().map(i128::to_string).collect();
                format!("one_of {}", listed.join(","))
            }
            Rule::Above(bound) => format!("above {bound}"),
            Rule::PaddedText {
                first,
                rest,
                longest,
            } => format!("padded_text {} {} {longest}", members(first), members(rest)),
        }
    }

    pub fn from_description(text: &str) -> Result<Rule, String> {
        let bad = || format!("rule {text:?}: expected one_of, above or padded_text");
        let number = |word: &str| -> Result<i128, String> {
            word.parse()
                .map_err(|_| format!("rule {text:?}: {word:?} is not an integer"))
        };
        let hex = |word: &str| -> Result<Vec<u8>, String> {
            (0..word.len())
                .step_by(2)
                .map(|at| {
                    word.get(at..at + 2)
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                        .ok_or_else(|| format!("rule {text:?}: {word:?} is not hex bytes"))
                })
                .collect()
        };
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["one_of", members] => Ok(Rule::OneOf(
                members
                    .split(',')
                    .filter(|member| !member.is_empty())
                    .map(number)
                    .collect::<Result<_, _>>()?,
            )),
            ["above", bound] => Ok(Rule::Above(number(bound)?)),
            ["padded_text", first, rest, longest] => Ok(Rule::padded_text(
                &hex(first)?,
                &hex(rest)?,
                number(longest)? as usize,
            )),
            _ => Err(bad()),
        }
    }
}

/// One field of a layout: where it sits in the frame and how it is packed.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub code: Code,
    pub offset: usize,
}

impl Field {
    /// Writes `value` at the start of `out` (the field's bytes): text shorter than the field stays
    /// NUL-padded and longer text is cut, like struct's "Ns"; an integer must be within the code's range.
    pub fn write(&self, value: &Value, out: &mut [u8]) -> Result<(), String> {
        match (self.code, value) {
            (Code::Bytes(width), Value::Bytes(text)) => {
                let used = text.len().min(width);
                out[..used].copy_from_slice(&text[..used]);
                out[used..width].fill(0);
                Ok(())
            }
            (Code::Bytes(_), Value::Int(number)) => {
                Err(format!("{}={number}: expected bytes", self.name))
            }
            (code, Value::Int(number)) => {
                let (low, high) = code.bounds().expect("an integer field");
                if *number < low || *number > high {
                    return Err(format!(
                        "{}={number}: out of range {low}..{high}",
                        self.name
                    ));
                }
                code.write_int(*number, out);
                Ok(())
            }
            (_, Value::Bytes(text)) => Err(format!(
                "{}={}: expected an integer",
                self.name,
                python_repr(&Value::Bytes(text))
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub field: usize,
    pub rule: Rule,
    pub expected: String,
}

/// One message type: header plus packed body; `record_size` > 0 when `fields[0]` counts trailing records.
#[derive(Debug, Clone)]
pub struct Layout {
    pub type_id: u8,
    pub name: String,
    pub fields: Vec<Field>,
    pub size: usize,
    pub record_size: usize,
    pub checks: Vec<Check>,
    pub ordered: Vec<(usize, usize)>,
}

impl Layout {
    pub fn new(
        type_id: u8,
        name: String,
        names: Vec<String>,
        codes: Vec<Code>,
        record_size: usize,
        checks: Vec<Check>,
        ordered: Vec<(usize, usize)>,
    ) -> Result<Layout, String> {
        if names.len() != codes.len() {
            return Err(format!(
                "{name}: {} field names for {} struct codes",
                names.len(),
                codes.len()
            ));
        }
        let mut fields = Vec::with_capacity(codes.len());
        let mut offset = HEADER_SIZE;
        for (field_name, code) in names.into_iter().zip(codes) {
            fields.push(Field {
                name: field_name,
                code,
                offset,
            });
            offset += code.size();
        }
        for check in &checks {
            if check.field >= fields.len() {
                return Err(format!(
                    "{name}: check on field {} of {}",
                    check.field,
                    fields.len()
                ));
            }
        }
        Ok(Layout {
            type_id,
            name,
            fields,
            size: offset,
            record_size,
            checks,
            ordered,
        })
    }

    pub fn value<'a>(&self, index: usize, body: &'a [u8]) -> Value<'a> {
        let field = &self.fields[index];
        let raw = &body[field.offset..field.offset + field.code.size()];
        match field.code {
            Code::Bytes(_) => Value::Bytes(raw),
            code => Value::Int(code.read_int(raw)),
        }
    }

    /// An integer field's value (`index` names no bytes field).
    pub fn int(&self, index: usize, body: &[u8]) -> i128 {
        match self.value(index, body) {
            Value::Int(number) => number,
            Value::Bytes(_) => unreachable!("{}: field {index} is bytes", self.name),
        }
    }

    /// The frame of `values` (one per field) followed by `records` (a batch's trailing records), written
    /// over `out`, whose capacity is reused.
    pub fn encode_into(
        &self,
        version: u8,
        sequence: u64,
        values: &[Value],
        records: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if values.len() != self.fields.len() {
            return Err(format!(
                "{} has {} fields, not {}",
                self.name,
                self.fields.len(),
                values.len()
            ));
        }
        let length = self.size + records.len();
        if length > MAX_FRAME_SIZE {
            return Err(format!(
                "{} of {length} bytes: the limit is {MAX_FRAME_SIZE}",
                self.name
            ));
        }
        out.clear();
        out.resize(length, 0);
        write_header(out, length, self.type_id, version, sequence);
        for (field, value) in self.fields.iter().zip(values) {
            field
                .write(value, &mut out[field.offset..])
                .map_err(|error| format!("{}.{error}", self.name))?;
        }
        out[self.size..].copy_from_slice(records);
        Ok(())
    }

    /// Checks the sizes and field rules of the frame `frame` (its `length` bytes, header included).
    pub fn validate(&self, frame: &[u8]) -> Result<(), WireError> {
        let length = frame.len();
        if length < self.size {
            return Err(WireError::new(
                TRUNCATED,
                length,
                format!(
                    "{} needs {} bytes, the frame has {}",
                    self.name, self.size, length
                ),
            ));
        }
        let expected = if self.record_size > 0 {
            let Value::Int(count) = self.value(0, frame) else {
                unreachable!("a record count is an integer")
            };
            self.size + self.record_size * count as usize
        } else {
            self.size
        };
        if length != expected {
            let reason = if length > expected {
                OVERSIZED
            } else {
                TRUNCATED
            };
            return Err(WireError::new(
                reason,
                length.min(expected),
                format!(
                    "{} is {} bytes, the frame says {}",
                    self.name, expected, length
                ),
            ));
        }
        if self.record_size > 0 {
            return Ok(());
        }
        for check in &self.checks {
            let value = self.value(check.field, frame);
            if !check.rule.accepts(&value) {
                let field = &self.fields[check.field];
                return Err(WireError::new(
                    INVALID_FIELD,
                    field.offset,
                    format!(
                        "{}.{}={}: {}",
                        self.name,
                        field.name,
                        python_repr(&value),
                        check.expected
                    ),
                ));
            }
        }
        for &(first, last) in &self.ordered {
            let (Value::Int(low), Value::Int(high)) =
                (self.value(first, frame), self.value(last, frame))
            else {
                continue;
            };
            if high < low {
                return Err(WireError::new(
                    INVALID_FIELD,
                    self.fields[last].offset,
                    format!(
                        "{}.{}={} is before {}={}",
                        self.name, self.fields[last].name, high, self.fields[first].name, low
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The layouts of one protocol version, by message type: what a decoder accepts.
#[derive(Debug, Clone)]
pub struct Codec {
    pub version: u8,
    pub layouts: Vec<Option<Layout>>,
}

/// One accepted frame: its layout, header sequence and bytes (header included).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub layout: &'a Layout,
    pub sequence: u64,
    pub bytes: &'a [u8],
}

impl Frame<'_> {
    pub fn value(&self, index: usize) -> Value<'_> {
        self.layout.value(index, self.bytes)
    }

    /// The trailing records of a batch (empty for a fixed-size frame).
    pub fn records(&self) -> &[u8] {
        &self.bytes[self.layout.size..]
    }
}

impl Codec {
    pub fn new(version: u8, layouts: Vec<Layout>) -> Result<Codec, String> {
        let mut by_id: Vec<Option<Layout>> = vec![None; 256];
        for layout in layouts {
            let slot = &mut by_id[layout.type_id as usize];
            if slot.is_some() {
                return Err(format!("message type {} registered twice", layout.type_id));
            }
            *slot = Some(layout);
        }
        Ok(Codec {
            version,
            layouts: by_id,
        })
    }

    /// One complete frame (a datagram), header and body checked.
    pub fn decode<'a>(&'a self, frame: &'a [u8]) -> Result<Frame<'a>, WireError> {
        let header = check_frame_header(frame, self.version)?;
        let layout = self.check_body(frame, header.type_id)?;
        Ok(Frame {
            layout,
            sequence: header.sequence,
            bytes: frame,
        })
    }

    /// The layout of a frame whose header was checked, once its sizes and field rules are.
    pub fn check_body(&self, frame: &[u8], type_id: u8) -> Result<&Layout, WireError> {
        let Some(layout) = &self.layouts[type_id as usize] else {
            return Err(unknown_type(type_id));
        };
        layout.validate(frame)?;
        Ok(layout)
    }

    /// The codec as tab-separated lines, which `Codec::from_description` reads back: what a decoder
    /// without Python (the fuzz target) needs of the layouts `protocol.py` declares.
    pub fn describe(&self) -> String {
        let mut text = format!("version\t{}\n", self.version);
        for layout in self.layouts.iter().flatten() {
            let format: String = layout.fields.iter().map(|f| f.code.letters()).collect();
            let names: Vec<&str> = layout.fields.iter().map(|f| f.name.as_str()).collect();
            let _ = writeln!(
                text,
                "layout\t{}\t{}\t{}\t{format}\t{}",
                layout.type_id,
                layout.name,
                layout.record_size,
                names.join(",")
            );
            for check in &layout.checks {
                let _ = writeln!(
                    text,
                    "check\t{}\t{}\t{}\t{}",
                    layout.type_id,
                    check.field,
                    check.rule.describe(),
                    check.expected
                );
            }
            for (first, last) in &layout.ordered {
                let _ = writeln!(text, "ordered\t{}\t{first}\t{last}", layout.type_id);
            }
        }
        text
    }

    pub fn from_description(text: &str) -> Result<Codec, String> {
        let mut version = None;
        let mut layouts: Vec<Layout> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let at = |what: String| format!("line {}: {what}", number + 1);
            let words: Vec<&str> = line.split('\t').collect();
            let integer = |word: &str| -> Result<usize, String> {
                word.parse()
                    .map_err(|_| at(format!("{word:?} is not a count")))
            };
            let index_of = |layouts: &[Layout], type_id: &str| {
                let type_id = integer(type_id)?;
                layouts
                    .iter()
                    .position(|layout| layout.type_id as usize == type_id)
                    .ok_or_else(|| at(format!("message type {type_id} has no layout line before")))
            };
            match words.as_slice() {
                ["version", value] => version = Some(integer(value)? as u8),
                ["layout", type_id, name, record_size, format, names] => {
                    let names: Vec<String> = names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let codes = parse_codes(format).map_err(at)?;
                    layouts.push(
                        Layout::new(
                            integer(type_id)? as u8,
                            (*name).to_owned(),
                            names,
                            codes,
                            integer(record_size)?,
                            Vec::new(),
                            Vec::new(),
                        )
                        .map_err(at)?,
                    );
                }
                ["check", type_id, field, rule, expected] => {
                    let index = index_of(&layouts, type_id)?;
                    let layout = &mut layouts[index];
                    let field = integer(field)?;
                    if field >= layout.fields.len() {
                        return Err(at(format!("{} has no field {field}", layout.name)));
                    }
                    layout.checks.push(Check {
                        field,
                        rule: Rule::from_description(rule).map_err(at)?,
                        expected: (*expected).to_owned(),
                    });
                }
                ["ordered", type_id, first, last] => {
                    let index = index_of(&layouts, type_id)?;
                    let layout = &mut layouts[index];
                    let (first, last) = (integer(first)?, integer(last)?);
                    if first.max(last) >= layout.fields.len() {
                        return Err(at(format!(
                            "{} has no field {}",
                            layout.name,
                            first.max(last)
                        )));
                    }
                    layout.ordered.push((first, last));
                }
                [""] => {}
                _ => {
                    return Err(at(format!(
                        "{line:?} is no version, layout, check or ordered line"
                    )))
                }
            }
        }
        Codec::new(version.ok_or("no version line")?, layouts)
    }
}

/// What a NewOrder and a RouteOrder frame both carry, in the same places: the order's id (the client's,
/// or the order service's), account, symbol, side, type, time in force, quantity and price.
#[derive(Clone, Copy)]
pub struct OrderFrame<'a> {
    pub id: u64,
    pub account: u64,
    pub symbol: &'a [u8],
    pub side: i64,
    pub order_type: i64,
    pub time_in_force: i64,
    pub quantity: i64,
    pub price: i64,
}

impl<'a> OrderFrame<'a> {
    /// `frame`'s fields under `layout` (a NewOrder's or a RouteOrder's), checked by `validate` before.
    pub fn read(layout: &Layout, frame: &'a [u8]) -> Self {
        let Value::Bytes(symbol) = layout.value(2, frame) else {
            unreachable!("{}: field 2 is the symbol", layout.name)
        };
        OrderFrame {
            id: layout.int(0, frame) as u64,
            account: layout.int(1, frame) as u64,
            symbol,
            side: layout.int(3, frame) as i64,
            order_type: layout.int(4, frame) as i64,
            time_in_force: layout.int(5, frame) as i64,
            quantity: layout.int(6, frame) as i64,
            price: layout.int(7, frame) as i64,
        }
    }
}

/// A frame header: length, type, version, sequence.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub length: usize,
    pub type_id: u8,
    pub version: u8,
    pub sequence: u64,
}

/// The header at the start of `raw`, which holds at least HEADER_SIZE bytes.
pub fn read_header(raw: &[u8]) -> Header {
    Header {
        length: u16::from_le_bytes([raw[0], raw[1]]) as usize,
        type_id: raw[2],
        version: raw[3],
        sequence: u64::from_le_bytes(raw[4..12].try_into().unwrap()),
    }
}

pub fn write_header(out: &mut [u8], length: usize, type_id: u8, version: u8, sequence: u64) {
    out[0..2].copy_from_slice(&(length as u16).to_le_bytes());
    out[2] = type_id;
    out[3] = version;
    out[4..12].copy_from_slice(&sequence.to_le_bytes());
}

pub fn malformed_length(length: usize) -> WireError {
    WireError::new(
        MALFORMED_FRAME,
        0,
        format!("length {length} is shorter than the header"),
    )
}

pub fn wrong_version(version: u8, speaks: u8) -> WireError {
    WireError::new(
        WRONG_VERSION,
        3,
        format!("version {version}, this service speaks {speaks}"),
    )
}

pub fn unknown_type(type_id: u8) -> WireError {
    WireError::new(
        UNKNOWN_TYPE,
        2,
        format!("message type {type_id} is not defined"),
    )
}

/// The header of one complete frame (a datagram), checked against the frame's real size.
pub fn check_frame_header(frame: &[u8], speaks: u8) -> Result<Header, WireError> {
    if frame.len() < HEADER_SIZE {
        return Err(WireError::new(
            TRUNCATED,
            frame.len(),
            format!("{} bytes, a header needs {}", frame.len(), HEADER_SIZE),
        ));
    }
    let header = read_header(frame);
    if header.length < HEADER_SIZE {
        return Err(malformed_length(header.length));
    }
    if header.version != speaks {
        return Err(wrong_version(header.version, speaks));
    }
    if header.length != frame.len() {
        let reason = if header.length > frame.len() {
            TRUNCATED
        } else {
            OVERSIZED
        };
        return Err(WireError::new(
            reason,
            header.length.min(frame.len()),
            format!("header says {} bytes, got {}", header.length, frame.len()),
        ));
    }
    Ok(header)
}

/// How Python writes a value: decimal integers, bytes as b'...' with its escapes.
pub fn python_repr(value: &Value) -> String {
    match value {
        Value::Int(number) => number.to_string(),
        Value::Bytes(raw) => {
            let quote = if raw.contains(&b'\'') && !raw.contains(&b'"') {
                '"'
            } else {
                '\''
            };
            let mut text = String::with_capacity(raw.len() + 3);
            text.push('b');
            text.push(quote);
            for &byte in raw.iter() {
                match byte {
                    b'\\' => text.push_str("\\\\"),
                    b'\t' => text.push_str("\\t"),
                    b'\n' => text.push_str("\\n"),
                    b'\r' => text.push_str("\\r"),
                    _ if byte as char == quote => {
                        text.push('\\');
                        text.push(quote);
                    }
                    0x20..=0x7e => text.push(byte as char),
                    _ => {
                        let _ = write!(text, "\\x{byte:02x}");
                    }
                }
            }
            text.push(quote);
            text
        }
    }
}

/// Where a run of identical-prefix frames of `length` bytes starting at `position` ends (a batchable
/// type's frames share length, type and version).
pub fn run_end(buffer: &[u8], position: usize, length: usize) -> usize {
    let prefix = &buffer[position..position + 4];
    let mut end = position + length;
    while buffer.len() - end >= length && &buffer[end..end + 4] == prefix {
        end += length;
    }
    end
}
