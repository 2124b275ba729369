//! An inert pickle interpreter: it understands the opcodes `torch.save` writes and never calls
//! anything; only allow-listed globals (tensor rebuilding, storages, OrderedDict) mean anything.

use std::collections::HashMap;
use std::rc::Rc;

use super::{elem_size, Dtype, StateDict, TensorRef};

/// A pickled value. Containers are reference-counted so `BINGET` copies are cheap.
#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(usize),
    /// A tuple or a list, and its nesting depth.
    Seq(Rc<Vec<Value>>, usize),
    /// A dict's entries in insertion order (for a repeated key the last wins when it is read),
    /// and its nesting depth.
    Dict(Rc<Vec<(Value, Value)>>, usize),
    Global(Global),
    /// A storage from a persistent id: dtype (or the unsupported type's name) and zip key.
    Storage(Result<Dtype, Rc<str>>, Rc<str>),
    Tensor(Rc<TensorRef>),
    /// Anything we do not model (a forbidden global's "result", a big integer, ...).
    Opaque(Rc<str>),
}

/// A `GLOBAL` reference. Only these names mean anything; the rest stay inert.
#[derive(Debug, Clone)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// A `torch.*Storage` class or a `torch.<dtype>`.
    Dtype(Dtype),
    Unsupported(Rc<str>),
}

fn resolve_global(module: &str, name: &str) -> Global {
    use Dtype::*;
    let dtype = match name {
        "FloatStorage" | "float32" | "float" => Some(F32),
        "HalfStorage" | "float16" | "half" => Some(F16),
        "BFloat16Storage" | "bfloat16" => Some(BF16),
        "DoubleStorage" | "float64" | "double" => Some(F64),
        "LongStorage" | "int64" | "long" => Some(I64),
        "IntStorage" | "int32" | "int" => Some(I32),
        "ShortStorage" | "int16" | "short" => Some(I16),
        "CharStorage" | "int8" => Some(I8),
        "ByteStorage" | "UntypedStorage" | "uint8" => Some(U8),
        "BoolStorage" | "bool" => Some(BOOL),
        _ => None,
    };
    match (module, name, dtype) {
        ("collections", "OrderedDict", _) => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2", _) => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state", _) => {
            Global::RebuildParameter
        }
        ("torch", _, Some(dtype)) => Global::Dtype(dtype),
        _ => Global::Unsupported(format!("{module}.{name}").into()),
    }
}

/// A short description of a value, for the skipped list and errors.
fn kind(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Float(x) => format!("float {x}"),
        Value::Str(s) if s.chars().count() > 40 => "str".into(),
        Value::Str(s) => format!("str {s:?}"),
        Value::Bytes(n) => format!("{n} bytes"),
        Value::Seq(..) => "tuple or list".into(),
        Value::Dict(..) => "dict".into(),
        Value::Global(Global::Unsupported(name)) => format!("global {name}"),
        Value::Global(_) => "global".into(),
        Value::Storage(..) => "bare storage".into(),
        Value::Tensor(_) => "tensor".into(),
        Value::Opaque(what) => what.to_string(),
    }
}

/// Deepest nesting allowed: deeper values could overflow the stack when dropped.
const MAX_DEPTH: usize = 100;

/// The nesting depth of a container holding `items`, or an error past [`MAX_DEPTH`].
fn nesting(items: &[Value]) -> Result<usize, String> {
    let child = |v: &Value| match v {
        Value::Seq(_, d) | Value::Dict(_, d) => *d,
        _ => 0,
    };
    let depth = 1 + items.iter().map(child).max().unwrap_or(0);
    (depth <= MAX_DEPTH).then_some(depth).ok_or_else(|| "containers nested too deeply".into())
}

/// A tuple or list of `items`.
fn seq(items: Vec<Value>) -> Result<Value, String> {
    let depth = nesting(&items)?;
    Ok(Value::Seq(Rc::new(items), depth))
}

/// Runs the pickle `data` with the inert interpreter and returns the value `STOP` leaves.
pub(super) fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut vm =
        Vm { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), copied: 0 };
    loop {
        let at = vm.pos;
        let op = vm.take(1)?[0];
        if let Some(done) =
            vm.step(op).map_err(|e| format!("{e} (opcode 0x{op:02x} at byte {at})"))?
        {
            return Ok(done);
        }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Items copied by `Rc::make_mut` so far.
    copied: usize,
}

impl<'a> Vm<'a> {
    /// The next `n` bytes of the pickle (never past its end).
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len());
        let end = end.ok_or_else(|| "pickle ends unexpectedly".to_string())?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        let line = std::str::from_utf8(&self.take(len + 1)?[..len]).map_err(|e| e.to_string())?;
        Ok(line)
    }
    fn text(&mut self, n: u64) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| "string too long")?;
        let s = std::str::from_utf8(self.take(n)?).map_err(|e| format!("bad UTF-8 string: {e}"))?;
        Ok(Value::Str(s.into()))
    }
    fn bytes(&mut self, n: u64) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| "bytes too long")?;
        Ok(Value::Bytes(self.take(n)?.len()))
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".to_string())
    }
    /// Pops everything pushed since the last `MARK`.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("MARK missing")?;
        if mark > self.stack.len() {
            return Err("MARK above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }
    fn memo_get(&mut self, key: u64) -> Result<(), String> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| format!("memo key {key} missing"))?;
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, key: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }
    /// APPEND(S), SETITEM(S): adds `items` to the list or dict on top of the stack.
    fn extend(&mut self, items: Vec<Value>) -> Result<(), String> {
        let depth = nesting(&items)?;
        // A container that the memo also holds is copied before it changes (Rc::make_mut).
        // torch.save only ever copies empty ones; cap the total so no pickle can go quadratic.
        let mut copy = |len: usize| {
            self.copied += len;
            (self.copied <= self.data.len()).then_some(()).ok_or("too many container copies")
        };
        match self.stack.last_mut() {
            Some(Value::Seq(list, d)) => {
                copy(if Rc::strong_count(list) > 1 { list.len() } else { 0 })?;
                Rc::make_mut(list).extend(items);
                *d = depth.max(*d);
            }
            Some(Value::Dict(dict, d)) if items.len().is_multiple_of(2) => {
                copy(if Rc::strong_count(dict) > 1 { dict.len() } else { 0 })?;
                let dict = Rc::make_mut(dict);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.push((k, v));
                }
                *d = depth.max(*d);
            }
            _ => return Err("APPEND or SETITEM without a list or dict (or odd items)".into()),
        }
        Ok(())
    }

    /// Executes one opcode; returns the result at `STOP`.
    fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        match op {
            b'.' => return self.pop().map(Some),       // STOP
            0x80 => self.take(1).map(drop)?,           // PROTO
            0x95 => self.take(8).map(drop)?,           // FRAME
            b'(' => self.marks.push(self.stack.len()), // MARK
            b'0' => self.pop().map(drop)?,             // POP
            b'1' => self.pop_mark().map(drop)?,        // POP_MARK
            b'b' => self.pop().map(drop)?,             // BUILD: the state is ignored
            b'a' => {
                let v = self.pop()?; // APPEND
                self.extend(vec![v])?
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?); // SETITEM
                self.extend(vec![k, v])?
            }
            b'e' | b'u' => {
                let items = self.pop_mark()?; // APPENDS, SETITEMS
                self.extend(items)?
            }
            b'q' => self.uint(1).and_then(|k| self.memo_put(k))?, // BINPUT
            b'r' => self.uint(4).and_then(|k| self.memo_put(k))?, // LONG_BINPUT
            0x94 => self.memo_put(self.memo.len() as u64)?,       // MEMOIZE
            b'h' => self.uint(1).and_then(|k| self.memo_get(k))?, // BINGET
            b'j' => self.uint(4).and_then(|k| self.memo_get(k))?, // LONG_BINGET
            op => {
                let v = self.value(op)?;
                self.stack.push(v)
            }
        }
        Ok(None)
    }

    /// Executes an opcode that pushes one value, and returns that value.
    fn value(&mut self, op: u8) -> Result<Value, String> {
        Ok(match op {
            b'2' => self.top()?.clone(), // DUP
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(self.uint(4)? as u32 as i32 as i64), // BININT
            b'K' => Value::Int(self.uint(1)? as i64),               // BININT1
            b'M' => Value::Int(self.uint(2)? as i64),               // BININT2
            0x8a => {
                let n = self.uint(1)? as usize; // LONG1: little-endian two's complement
                let bytes = self.take(n)?;
                match n {
                    0 => Value::Int(0),
                    1..=8 => {
                        let mut buf = [if bytes[n - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(bytes);
                        Value::Int(i64::from_le_bytes(buf))
                    }
                    _ => Value::Opaque("integer wider than 64 bits".into()),
                }
            }
            b'G' => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            b'X' => self.uint(4).and_then(|n| self.text(n))?, // BINUNICODE
            0x8c => self.uint(1).and_then(|n| self.text(n))?, // SHORT_BINUNICODE
            0x8d => self.uint(8).and_then(|n| self.text(n))?, // BINUNICODE8
            b'B' | b'T' => self.uint(4).and_then(|n| self.bytes(n))?, // BINBYTES, BINSTRING
            b'C' | b'U' => self.uint(1).and_then(|n| self.bytes(n))?, // SHORT_BIN{BYTES,STRING}
            b')' | b']' => Value::Seq(Rc::default(), 1),      // EMPTY_TUPLE, EMPTY_LIST
            b't' | b'l' => seq(self.pop_mark()?)?,            // TUPLE, LIST
            0x85..=0x87 => {
                let n = (op - 0x84) as usize; // TUPLE1..3
                let start = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
                seq(self.stack.split_off(start))?
            }
            b'}' => Value::Dict(Rc::default(), 1), // EMPTY_DICT
            b'd' => {
                let items = self.pop_mark()?; // DICT
                self.stack.push(Value::Dict(Rc::default(), 1));
                self.extend(items)?;
                self.pop()?
            }
            b'c' => {
                let (module, name) = (self.line()?, self.line()?); // GLOBAL
                Value::Global(resolve_global(module, name))
            }
            0x93 => match (self.pop()?, self.pop()?) {
                (Value::Str(name), Value::Str(module)) => {
                    Value::Global(resolve_global(&module, &name)) // STACK_GLOBAL
                }
                _ => return Err("STACK_GLOBAL needs two strings".into()),
            },
            b'R' => {
                let args = self.pop()?; // REDUCE: only allow-listed globals mean anything
                let callable = self.pop()?;
                reduce(callable, args)?
            }
            0x81 => {
                let _args = self.pop()?; // NEWOBJ
                Value::Opaque(format!("instance of {}", kind(&self.pop()?)).into())
            }
            b'Q' => persistent_load(&self.pop()?), // BINPERSID
            _ => return Err(format!("unsupported pickle opcode 0x{op:02x}")),
        })
    }
}

/// `REDUCE`: builds dicts and tensors; every other "call" yields an inert placeholder.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Seq(args, _) = args else { return Err("REDUCE arguments are not a tuple".into()) };
    Ok(match callable {
        Value::Global(Global::OrderedDict) => Value::Dict(Rc::default(), 1),
        Value::Global(Global::RebuildTensorV2) => rebuild_tensor(&args)?,
        Value::Global(Global::RebuildParameter) => match args.first() {
            Some(t @ Value::Tensor(_)) => t.clone(),
            Some(other) => other.clone(), // e.g. an unsupported-dtype placeholder
            None => return Err("_rebuild_parameter without arguments".into()),
        },
        other => Value::Opaque(format!("call to {} (not executed)", kind(&other)).into()),
    })
}

/// `('storage', storage_type, key, location, numel)` names the zip entry `data/<key>`.
fn persistent_load(pid: &Value) -> Value {
    if let Value::Seq(t, _) = pid {
        if let [Value::Str(tag), ty, Value::Str(key), ..] = t.as_slice() {
            if &**tag == "storage" {
                let dtype = match ty {
                    Value::Global(Global::Dtype(d)) => Ok(*d),
                    other => Err(kind(other).into()),
                };
                return Value::Storage(dtype, key.clone());
            }
        }
    }
    Value::Opaque("unrecognised persistent id".into())
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [Value::Storage(dtype, key), offset, Value::Seq(shape, _), Value::Seq(strides, _), ..] =
        args
    else {
        return Err("malformed _rebuild_tensor_v2 arguments".into());
    };
    let dtype = match dtype {
        Ok(d) => *d,
        Err(ty) => return Ok(Value::Opaque(format!("tensor of unsupported type {ty}").into())),
    };
    let int = |v: &Value| match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative size or stride {i}")),
        other => Err(format!("tensor size or stride is a {}", kind(other))),
    };
    let shape: Vec<usize> = shape.iter().map(int).collect::<Result<_, _>>()?;
    let strides: Vec<usize> = strides.iter().map(int).collect::<Result<_, _>>()?;
    if shape.len() != strides.len() {
        return Err(format!("tensor shape {shape:?} and strides {strides:?} differ in rank"));
    }
    let nbytes = shape.iter().try_fold(elem_size(dtype), |acc, &n| acc.checked_mul(n));
    let nbytes = nbytes.ok_or_else(|| format!("tensor shape {shape:?} overflows"))?;
    let offset = int(offset)?;
    let storage = key.to_string();
    Ok(Value::Tensor(Rc::new(TensorRef { dtype, storage, offset, shape, strides, nbytes })))
}

/// A dict's string-keyed entries, last value winning for repeated keys.
fn dict_entries(dict: &[(Value, Value)], skipped: &mut Vec<String>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in dict {
        let Value::Str(k) = k else {
            skipped.push(format!("<{} key>: {}", kind(k), kind(v)));
            continue;
        };
        match index.get(&**k) {
            Some(&i) => out[i].1 = v.clone(),
            None => {
                index.insert(k.to_string(), out.len());
                out.push((k.to_string(), v.clone()));
            }
        }
    }
    out
}

/// Picks the tensors: the top-level dict, or its `"state_dict"`/`"model"` dict when the top level
/// holds no tensors itself.
pub(super) fn select_state_dict(top: &Value, file_len: u64) -> Result<StateDict, String> {
    let Value::Dict(dict, _) = top else {
        return Err(format!("the pickle holds a {}, not a dict of tensors", kind(top)));
    };
    let mut skipped = Vec::new();
    let mut entries = dict_entries(dict, &mut skipped);
    let has_tensors = |e: &[(String, Value)]| e.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if !has_tensors(&entries) {
        let nested = entries.iter().find_map(|(k, v)| match v {
            Value::Dict(d, _) if k == "state_dict" || k == "model" => {
                let mut inner_skipped = Vec::new();
                let inner = dict_entries(d, &mut inner_skipped);
                has_tensors(&inner).then(|| (k.clone(), inner, inner_skipped))
            }
            _ => None,
        });
        if let Some((key, inner, inner_skipped)) = nested {
            for (k, v) in entries.iter().filter(|(k, _)| *k != key) {
                skipped.push(format!("{k}: {} (outside {key:?})", kind(v)));
            }
            skipped.extend(inner_skipped);
            entries = inner;
        }
    }
    let mut tensors = Vec::new();
    for (name, v) in entries {
        match v {
            Value::Tensor(t) if name == "__metadata__" => {
                skipped.push(format!("{name}: tensor name reserved by safetensors ({:?})", t.shape))
            }
            Value::Tensor(t) if t.nbytes as u64 > file_len => {
                return Err(format!(
                    "tensor {name:?} of shape {:?} needs {} bytes, more than the whole file",
                    t.shape, t.nbytes
                ))
            }
            Value::Tensor(t) => tensors.push((name, (*t).clone())),
            other => skipped.push(format!("{name}: {}", kind(&other))),
        }
    }
    if tensors.is_empty() {
        return Err(format!("no tensors found (skipped: {})", skipped.join(", ")));
    }
    Ok(StateDict { tensors, skipped })
}
