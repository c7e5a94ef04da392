//! A pickle interpreter for the `data.pkl` of `torch.save` files, written for hostile input.
//!
//! Pickles are a stack machine; this one builds the objects the opcodes describe into a flat
//! arena (objects refer to each other by index), so no step of reading, walking or freeing them
//! recurses and deep nesting cannot overflow the stack. It runs no code: a global is recorded
//! as its module and name, a call as the callable and its arguments. What it refuses, before
//! allocating anything for it:
//!
//! - a length field (strings, bytes, frames, long integers) larger than the bytes left;
//! - nesting deeper than [`MAX_DEPTH`] (containers inside containers, or open MARKs);
//! - more than [`MAX_CELLS`] values held at once (stack, memo, containers), so a small pickle
//!   cannot expand into a huge structure (the memo shares objects instead of copying them);
//! - opcodes a state dict never needs (extensions, out-of-band buffers, INST/OBJ).
//!
//! Errors are returned as text with the byte position; the caller adds the file.
//!
//! One file on purpose: the opcode table, the arena and the limits are one interpreter, and
//! splitting them would spread each opcode's checks over several files.

use std::collections::HashMap;

/// Deepest nesting of containers (and of open MARKs) accepted. A state dict nests about five
/// levels; a limit far above that still refuses the pathological pickles that would make a
/// recursive reader overflow its stack.
pub const MAX_DEPTH: u32 = 1000;

/// Most values a pickle may hold at once (each costs about 16 bytes): a state dict with
/// several hundred thousand tensors fits.
pub const MAX_CELLS: usize = 1 << 24;

/// A value on the stack, in the memo or inside a container. Scalars are held inline; strings,
/// containers and everything else live in the arena.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in 64 bits (its value is never needed).
    BigInt,
    Float(f64),
    Obj(u32),
}

/// An arena object.
#[derive(Debug)]
pub enum Obj {
    Str(String),
    /// A bytes object (its contents are never needed).
    Bytes,
    Tuple(Vec<Val>),
    List(Vec<Val>),
    /// A dict (also an `OrderedDict`), items in insertion order.
    Dict(Vec<(Val, Val)>),
    /// A set (its items are never needed).
    Set,
    Global {
        module: String,
        name: String,
    },
    /// `func(*args)` (REDUCE, NEWOBJ).
    Call {
        func: Val,
        args: Val,
    },
    /// A persistent id (BINPERSID): torch's reference to a storage.
    PersId(Val),
}

/// The objects of a pickle and the value it returns.
#[derive(Debug)]
pub struct Pickle {
    pub objs: Vec<Obj>,
    pub root: Val,
}

impl Pickle {
    pub fn obj(&self, v: Val) -> Option<&Obj> {
        match v {
            Val::Obj(i) => self.objs.get(i as usize),
            _ => None,
        }
    }

    pub fn str(&self, v: Val) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn tuple(&self, v: Val) -> Option<&[Val]> {
        match self.obj(v) {
            Some(Obj::Tuple(t)) => Some(t),
            _ => None,
        }
    }

    pub fn dict(&self, v: Val) -> Option<&[(Val, Val)]> {
        match self.obj(v) {
            Some(Obj::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// A short description of a value's kind, for messages.
    pub fn kind(&self, v: Val) -> String {
        match v {
            Val::None => "None".into(),
            Val::Bool(_) => "a bool".into(),
            Val::Int(_) | Val::BigInt => "an int".into(),
            Val::Float(_) => "a float".into(),
            Val::Obj(_) => match self.obj(v) {
                Some(Obj::Str(_)) => "a string".into(),
                Some(Obj::Bytes) => "bytes".into(),
                Some(Obj::Tuple(_)) => "a tuple".into(),
                Some(Obj::List(_)) => "a list".into(),
                Some(Obj::Dict(_)) => "a dict".into(),
                Some(Obj::Set) => "a set".into(),
                Some(Obj::Global { module, name }) => format!("the global {module}.{name}"),
                Some(Obj::Call { func, .. }) => match self.obj(*func) {
                    Some(Obj::Global { module, name }) => format!("a {module}.{name}(...) object"),
                    _ => "an object".into(),
                },
                Some(Obj::PersId(_)) => "a persistent id".into(),
                None => "nothing".into(),
            },
        }
    }
}

/// Interpret `data` (a whole pickle).
pub fn parse(data: &[u8]) -> Result<Pickle, String> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
        depth: Vec::new(),
        cells: 0,
    };
    let root = vm
        .run()
        .map_err(|m| format!("at byte {}: {m}", vm.op_pos))?;
    Ok(Pickle {
        objs: vm.objs,
        root,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts (for messages).
    op_pos: usize,
    stack: Vec<Val>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    objs: Vec<Obj>,
    /// Nesting depth of each arena object (0 for strings and other leaves).
    depth: Vec<u32>,
    /// Values held in containers, objects and the memo (the stack is counted separately).
    cells: usize,
}

type R<T> = Result<T, String>;

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(format!(
                "{what} needs {n} bytes but only {left} are left in the pickle (truncated or \
                 corrupt)"
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> R<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> R<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> R<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> R<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A length field, checked against the bytes left before anything is allocated for it.
    fn len_field(&mut self, len: u64, what: &str) -> R<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if len > left {
            return Err(format!(
                "{what} has length {len}, more than the {left} bytes left in the pickle"
            ));
        }
        Ok(len as usize)
    }

    /// A text line (protocol 0 arguments), without its newline.
    fn line(&mut self, what: &str) -> R<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("{what} has no terminating newline"))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn budget(&self, more: usize) -> R<()> {
        if self.cells + self.stack.len() + more > MAX_CELLS {
            return Err(format!(
                "the pickle builds more than {MAX_CELLS} values, more than any state dict \
                 needs"
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Val) -> R<()> {
        self.budget(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, op: &str) -> R<Val> {
        if self.stack.len() <= self.floor() {
            return Err(format!(
                "{op} needs a value, but the stack is empty{}",
                if self.marks.is_empty() {
                    ""
                } else {
                    " above the last MARK"
                }
            ));
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top(&self, op: &str) -> R<Val> {
        if self.stack.len() <= self.floor() {
            return Err(format!("{op} needs a value, but the stack is empty"));
        }
        Ok(*self.stack.last().expect("checked non-empty"))
    }

    fn pop_mark(&mut self, op: &str) -> R<Vec<Val>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("{op} needs a MARK, but none is open"))?;
        Ok(self.stack.split_off(m))
    }

    fn depth_of(&self, v: Val) -> u32 {
        match v {
            Val::Obj(i) => self.depth[i as usize],
            _ => 0,
        }
    }

    fn check_depth(&self, d: u32) -> R<()> {
        if d > MAX_DEPTH {
            return Err(format!(
                "objects are nested more than {MAX_DEPTH} levels deep, far more than a state \
                 dict needs (l3kit's limit)"
            ));
        }
        Ok(())
    }

    /// The depth of a container holding `children`.
    fn depth_over(&self, children: &[Val]) -> u32 {
        1 + children
            .iter()
            .map(|&c| self.depth_of(c))
            .max()
            .unwrap_or(0)
    }

    /// Add an object of nesting `depth`; `held` values count toward the budget.
    fn alloc(&mut self, obj: Obj, depth: u32, held: usize) -> R<Val> {
        self.check_depth(depth)?;
        self.budget(held + 2)?;
        let id = u32::try_from(self.objs.len()).map_err(|_| "too many objects".to_string())?;
        self.cells += held + 2;
        self.objs.push(obj);
        self.depth.push(depth);
        Ok(Val::Obj(id))
    }

    fn new_str(&mut self, bytes: &[u8], what: &str, lossy: bool) -> R<Val> {
        let s = if lossy {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))?
        };
        // A string costs about one cell per 16 bytes.
        let held = bytes.len() / 16;
        self.alloc(Obj::Str(s), 0, held)
    }

    fn tuple(&mut self, items: Vec<Val>) -> R<Val> {
        let depth = self.depth_over(&items);
        let n = items.len();
        self.alloc(Obj::Tuple(items), depth, n)
    }

    /// Append `items` to the list, dict or set at stack top.
    fn extend_top(&mut self, op: &str, items: Vec<Val>, pairs: bool) -> R<()> {
        let target = self.top(op)?;
        let Val::Obj(id) = target else {
            return Err(format!("{op} on a {target:?}, which is not a container"));
        };
        let id = id as usize;
        let child_depth = items.iter().map(|&c| self.depth_of(c)).max();
        self.budget(items.len())?;
        match (&mut self.objs[id], pairs) {
            (Obj::List(v), false) => v.extend_from_slice(&items),
            (Obj::Set, false) => {}
            (Obj::Dict(d), true) => {
                if !items.len().is_multiple_of(2) {
                    return Err(format!("{op} has an odd number of items for a dict"));
                }
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
            }
            (other, _) => {
                return Err(format!(
                    "{op} on {}, which is not a {}",
                    obj_kind(other),
                    if pairs { "dict" } else { "list or set" }
                ))
            }
        }
        self.cells += items.len();
        if let Some(d) = child_depth {
            let nd = self.depth[id].max(d + 1);
            self.check_depth(nd)?;
            self.depth[id] = nd;
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32, op: &str) -> R<()> {
        let v = self.top(op)?;
        if self.memo.insert(id, v).is_none() {
            self.budget(1)?;
            self.cells += 1;
        }
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> R<()> {
        let v = *self
            .memo
            .get(&id)
            .ok_or_else(|| format!("memo entry {id} is read before it is written"))?;
        self.push(v)
    }

    fn call(&mut self, func: Val, args: Val) -> R<Val> {
        // Dict-like classes become dicts, so SETITEMS fills them as Python would.
        if let Val::Obj(f) = func {
            if let Obj::Global { module, name } = &self.objs[f as usize] {
                let dict_like = matches!(
                    (module.as_str(), name.as_str()),
                    ("collections", "OrderedDict")
                        | ("collections", "defaultdict")
                        | ("builtins" | "__builtin__", "dict")
                );
                if dict_like {
                    return self.alloc(Obj::Dict(Vec::new()), 1, 0);
                }
            }
        }
        let depth = self.depth_over(&[func, args]);
        self.alloc(Obj::Call { func, args }, depth, 2)
    }

    fn text_int(&mut self, what: &str) -> R<Val> {
        let line = self.line(what)?;
        let text = std::str::from_utf8(line).map_err(|_| format!("{what} is not text"))?;
        let text = text.trim().trim_end_matches('L');
        match text {
            "01" => return Ok(Val::Bool(true)),
            "00" => return Ok(Val::Bool(false)),
            _ => {}
        }
        match text.parse::<i64>() {
            Ok(v) => Ok(Val::Int(v)),
            Err(_)
                if !text.is_empty()
                    && text
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                Ok(Val::BigInt)
            }
            Err(_) => Err(format!("{what} {text:?} is not an integer")),
        }
    }

    fn long(&mut self, n: usize) -> R<Val> {
        let bytes = self.take(n, "LONG")?;
        if n == 0 {
            return Ok(Val::Int(0));
        }
        if n > 8 {
            return Ok(Val::BigInt);
        }
        let mut buf = if bytes[n - 1] & 0x80 != 0 {
            [0xFFu8; 8]
        } else {
            [0u8; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(Val::Int(i64::from_le_bytes(buf)))
    }

    fn run(&mut self) -> R<Val> {
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.data.len() {
                return Err("the pickle ends without a STOP opcode (truncated?)".into());
            }
            let op = self.data[self.pos];
            self.pos += 1;
            match op {
                0x80 => {
                    let v = self.u8("PROTO")?;
                    if v > 5 {
                        return Err(format!("pickle protocol {v} is not supported (0 to 5 are)"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the frame's contents follow inline.
                    let n = self.u64("FRAME")?;
                    self.len_field(n, "FRAME")?;
                }
                b'.' => {
                    return self.pop("STOP");
                }
                // Integers, floats, constants.
                b'J' => {
                    let v = self.u32("BININT")? as i32;
                    self.push(Val::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push(Val::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16("BININT2")?;
                    self.push(Val::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8("LONG1")? as u64;
                    let n = self.len_field(n, "LONG1")?;
                    let v = self.long(n)?;
                    self.push(v)?
                }
                0x8b => {
                    let n = self.u32("LONG4")? as i32;
                    if n < 0 {
                        return Err(format!("LONG4 has negative length {n}"));
                    }
                    let n = self.len_field(n as u64, "LONG4")?;
                    let v = self.long(n)?;
                    self.push(v)?
                }
                b'I' => {
                    let v = self.text_int("INT")?;
                    self.push(v)?
                }
                b'L' => {
                    let v = self.text_int("LONG")?;
                    self.push(v)?
                }
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Val::Float(v))?
                }
                b'F' => {
                    let line = self.line("FLOAT")?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|t| t.trim().parse::<f64>().ok())
                        .ok_or_else(|| "FLOAT is not a number".to_string())?;
                    self.push(Val::Float(v))?
                }
                b'N' => self.push(Val::None)?,
                0x88 => self.push(Val::Bool(true))?,
                0x89 => self.push(Val::Bool(false))?,
                // Strings and bytes: every length is checked against the bytes left first.
                b'X' | 0x8c | 0x8d => {
                    let (n, what) = match op {
                        b'X' => (self.u32("BINUNICODE")? as u64, "BINUNICODE"),
                        0x8c => (self.u8("SHORT_BINUNICODE")? as u64, "SHORT_BINUNICODE"),
                        _ => (self.u64("BINUNICODE8")?, "BINUNICODE8"),
                    };
                    let n = self.len_field(n, what)?;
                    let bytes = self.take(n, what)?;
                    let v = self.new_str(bytes, what, false)?;
                    self.push(v)?
                }
                b'T' | b'U' => {
                    let (n, what) = if op == b'T' {
                        let n = self.u32("BINSTRING")? as i32;
                        if n < 0 {
                            return Err(format!("BINSTRING has negative length {n}"));
                        }
                        (n as u64, "BINSTRING")
                    } else {
                        (self.u8("SHORT_BINSTRING")? as u64, "SHORT_BINSTRING")
                    };
                    let n = self.len_field(n, what)?;
                    let bytes = self.take(n, what)?;
                    let v = self.new_str(bytes, what, true)?;
                    self.push(v)?
                }
                b'S' | b'V' => {
                    let what = if op == b'S' { "STRING" } else { "UNICODE" };
                    let line = self.line(what)?;
                    let text = if op == b'S' && line.len() >= 2 {
                        &line[1..line.len() - 1]
                    } else {
                        line
                    };
                    let v = self.new_str(text, what, true)?;
                    self.push(v)?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let (n, what) = match op {
                        b'B' => (self.u32("BINBYTES")? as u64, "BINBYTES"),
                        b'C' => (self.u8("SHORT_BINBYTES")? as u64, "SHORT_BINBYTES"),
                        0x8e => (self.u64("BINBYTES8")?, "BINBYTES8"),
                        _ => (self.u64("BYTEARRAY8")?, "BYTEARRAY8"),
                    };
                    let n = self.len_field(n, what)?;
                    self.take(n, what)?;
                    let v = self.alloc(Obj::Bytes, 0, 0)?;
                    self.push(v)?
                }
                // Containers.
                b'(' => {
                    if self.marks.len() as u32 >= MAX_DEPTH {
                        return Err(format!(
                            "more than {MAX_DEPTH} MARKs are open at once, far more than a state \
                             dict needs (l3kit's limit)"
                        ));
                    }
                    self.marks.push(self.stack.len());
                }
                b')' => {
                    let v = self.tuple(Vec::new())?;
                    self.push(v)?
                }
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![Val::None; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop("TUPLE1/2/3")?;
                    }
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()), 1, 0)?;
                    self.push(v)?
                }
                b'l' => {
                    let items = self.pop_mark("LIST")?;
                    let n = items.len();
                    let depth = self.depth_over(&items);
                    let v = self.alloc(Obj::List(items), depth, n)?;
                    self.push(v)?
                }
                b'a' => {
                    let v = self.pop("APPEND")?;
                    self.extend_top("APPEND", vec![v], false)?
                }
                b'e' => {
                    let items = self.pop_mark("APPENDS")?;
                    self.extend_top("APPENDS", items, false)?
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()), 1, 0)?;
                    self.push(v)?
                }
                b'd' => {
                    let items = self.pop_mark("DICT")?;
                    if !items.len().is_multiple_of(2) {
                        return Err("DICT has an odd number of items".into());
                    }
                    let n = items.len();
                    let depth = self.depth_over(&items);
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
                    let v = self.alloc(Obj::Dict(pairs), depth, n)?;
                    self.push(v)?
                }
                b's' => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    self.extend_top("SETITEM", vec![key, value], true)?
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    self.extend_top("SETITEMS", items, true)?
                }
                0x8f => {
                    let v = self.alloc(Obj::Set, 1, 0)?;
                    self.push(v)?
                }
                0x90 => {
                    let items = self.pop_mark("ADDITEMS")?;
                    self.extend_top("ADDITEMS", items, false)?
                }
                0x91 => {
                    let items = self.pop_mark("FROZENSET")?;
                    let depth = self.depth_over(&items);
                    let v = self.alloc(Obj::Set, depth, items.len())?;
                    self.push(v)?
                }
                // Stack manipulation.
                b'0' => {
                    if self.stack.len() == self.floor() && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop("POP")?;
                    }
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top("DUP")?;
                    self.push(v)?
                }
                // The memo.
                b'p' => {
                    let id = self.text_int("PUT")?;
                    let Val::Int(id) = id else {
                        return Err("PUT has no integer key".into());
                    };
                    let id =
                        u32::try_from(id).map_err(|_| format!("PUT key {id} is out of range"))?;
                    self.memo_put(id, "PUT")?
                }
                b'q' => {
                    let id = self.u8("BINPUT")? as u32;
                    self.memo_put(id, "BINPUT")?
                }
                b'r' => {
                    let id = self.u32("LONG_BINPUT")?;
                    self.memo_put(id, "LONG_BINPUT")?
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len())
                        .map_err(|_| "the memo is full".to_string())?;
                    self.memo_put(id, "MEMOIZE")?
                }
                b'g' => {
                    let id = self.text_int("GET")?;
                    let Val::Int(id) = id else {
                        return Err("GET has no integer key".into());
                    };
                    let id =
                        u32::try_from(id).map_err(|_| format!("GET key {id} is out of range"))?;
                    self.memo_get(id)?
                }
                b'h' => {
                    let id = self.u8("BINGET")? as u32;
                    self.memo_get(id)?
                }
                b'j' => {
                    let id = self.u32("LONG_BINGET")?;
                    self.memo_get(id)?
                }
                // Globals and objects: recorded, never imported or called.
                b'c' => {
                    let module = String::from_utf8_lossy(self.line("GLOBAL")?).into_owned();
                    let name = String::from_utf8_lossy(self.line("GLOBAL")?).into_owned();
                    let held = (module.len() + name.len()) / 16;
                    let v = self.alloc(Obj::Global { module, name }, 0, held)?;
                    self.push(v)?
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let text = |vm: &Self, v: Val| match v {
                        Val::Obj(i) => match &vm.objs[i as usize] {
                            Obj::Str(s) => Some(s.clone()),
                            _ => None,
                        },
                        _ => None,
                    };
                    let (Some(module), Some(name)) = (text(self, module), text(self, name)) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    let held = (module.len() + name.len()) / 16;
                    let v = self.alloc(Obj::Global { module, name }, 0, held)?;
                    self.push(v)?
                }
                b'R' | 0x81 => {
                    let what = if op == b'R' { "REDUCE" } else { "NEWOBJ" };
                    let args = self.pop(what)?;
                    let func = self.pop(what)?;
                    let v = self.call(func, args)?;
                    self.push(v)?
                }
                0x92 => {
                    let _kwargs = self.pop("NEWOBJ_EX")?;
                    let args = self.pop("NEWOBJ_EX")?;
                    let func = self.pop("NEWOBJ_EX")?;
                    let v = self.call(func, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD sets an object's state (an OrderedDict's `_metadata`, say); no
                    // tensor is described by it, so the state is dropped.
                    self.pop("BUILD")?;
                    self.top("BUILD")?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let depth = self.depth_over(&[pid]);
                    let v = self.alloc(Obj::PersId(pid), depth, 1)?;
                    self.push(v)?
                }
                b'P' => {
                    let line = self.line("PERSID")?;
                    let s = self.new_str(line, "PERSID", true)?;
                    let v = self.alloc(Obj::PersId(s), 1, 1)?;
                    self.push(v)?
                }
                other => {
                    let name = match other {
                        0x82..=0x84 => "EXT1/EXT2/EXT4",
                        0x97 | 0x98 => "NEXT_BUFFER/READONLY_BUFFER",
                        b'i' => "INST",
                        b'o' => "OBJ",
                        _ => "",
                    };
                    return Err(if name.is_empty() {
                        format!("unknown opcode 0x{other:02x}")
                    } else {
                        format!("opcode {name} (0x{other:02x}) is not supported in a state dict")
                    });
                }
            }
        }
    }
}

fn obj_kind(obj: &Obj) -> &'static str {
    match obj {
        Obj::Str(_) => "a string",
        Obj::Bytes => "bytes",
        Obj::Tuple(_) => "a tuple",
        Obj::List(_) => "a list",
        Obj::Dict(_) => "a dict",
        Obj::Set => "a set",
        Obj::Global { .. } => "a global",
        Obj::Call { .. } => "an object",
        Obj::PersId(_) => "a persistent id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binunicode(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn a_small_dict_with_memo_sharing() {
        // {"a": (1, 2), "b": <the same tuple>}
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(binunicode("a"));
        p.extend([b'K', 1, b'K', 2, 0x86, b'q', 1]);
        p.extend(binunicode("b"));
        p.extend([b'h', 1, b'u', b'.']);
        let pk = parse(&p).unwrap();
        let d = pk.dict(pk.root).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(pk.str(d[0].0), Some("a"));
        assert_eq!(d[0].1, d[1].1, "the memo shares, it does not copy");
        assert_eq!(pk.tuple(d[0].1).unwrap(), &[Val::Int(1), Val::Int(2)][..]);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // 200k nested one-element tuples, and 200k nested lists.
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.push(b'.');
        let e = parse(&p).unwrap_err();
        assert!(e.contains("nested more than 1000"), "{e}");
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 200_000));
        p.extend(std::iter::repeat_n(b'a', 199_999));
        p.push(b'.');
        let e = parse(&p).unwrap_err();
        assert!(e.contains("nested more than 1000"), "{e}");
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'(', 200_000));
        let e = parse(&p).unwrap_err();
        assert!(e.contains("MARKs are open"), "{e}");
        // 1000 levels are fine.
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85u8, 999));
        p.push(b'.');
        parse(&p).unwrap();
    }

    #[test]
    fn lengths_are_checked_against_the_bytes_left() {
        // 4-byte length fields at their largest, 8-byte ones at 2^32: refused before any
        // allocation, naming the length and what is left.
        let cases: [(u8, Vec<u8>, &str); 6] = [
            (b'X', u32::MAX.to_le_bytes().to_vec(), "4294967295"),
            (b'B', u32::MAX.to_le_bytes().to_vec(), "4294967295"),
            (b'T', 0x7fff_ffffu32.to_le_bytes().to_vec(), "2147483647"),
            (0x8d, (1u64 << 32).to_le_bytes().to_vec(), "4294967296"),
            (0x8e, (1u64 << 32).to_le_bytes().to_vec(), "4294967296"),
            (
                0x96,
                u64::MAX.to_le_bytes().to_vec(),
                "18446744073709551615",
            ),
        ];
        for (op, len, shown) in cases {
            let mut p = vec![0x80, 2, op];
            p.extend_from_slice(&len);
            p.extend_from_slice(b"abc.");
            let e = parse(&p).unwrap_err();
            assert!(e.contains(&format!("length {shown}")), "{op:#x}: {e}");
            assert!(e.contains("more than the 4 bytes left"), "{op:#x}: {e}");
        }
        let e = parse(&[0x80, 2, 0x8a, 200, 1, 2]).unwrap_err();
        assert!(e.contains("LONG1 has length 200"), "{e}");
        let e = parse(b"\x80\x02\x8b\xff\xff\xff\x7f.").unwrap_err();
        assert!(e.contains("LONG4 has length 2147483647"), "{e}");
    }

    #[test]
    fn expansion_through_the_memo_is_bounded() {
        // A list appended to itself through the memo, then the pair doubled again and again:
        // shared references cost nothing, so this stays small; the depth limit stops it.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..2000 {
            p.extend([b'h', 0, b'a']);
        }
        p.push(b'.');
        let e = parse(&p).unwrap_err();
        assert!(e.contains("nested"), "{e}");
        // Pushing the same memo entry millions of times hits the value budget.
        let mut p = vec![0x80, 2, b'N', b'q', 0];
        p.extend(std::iter::repeat_n([b'h', 0], MAX_CELLS + 1).flatten());
        let e = parse(&p).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn malformed_streams_are_errors() {
        for (bytes, needle) in [
            (&b"\x80\x02"[..], "without a STOP"),
            (b"\x80\x02t.", "needs a MARK"),
            (b"\x80\x02a.", "needs a value"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02\xff", "unknown opcode 0xff"),
            (b"\x80\x02K\x01a.", "needs a value"),
            (b"\x80\x02]K\x01K\x02s.", "not a dict"),
            (b"\x80\x09.", "protocol 9"),
            (b"\x80\x02\x82\x01.", "EXT1"),
        ] {
            let e = parse(bytes).unwrap_err();
            assert!(e.contains(needle), "{bytes:?}: {e}");
            assert!(e.starts_with("at byte "), "{e}");
        }
    }
}
