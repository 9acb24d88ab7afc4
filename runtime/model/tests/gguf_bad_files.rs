//! Malformed GGUF files: every one must be refused with an error whose message names the
//! problem (asserted on the text), never a panic, and absurd counts must be refused before
//! anything is allocated for them.
//!
//! Inputs come from two sources, both rebuilt in memory (the shared fixtures are only read):
//! - [`small_file`]: a few-hundred-byte GGUF written by `GgufWriter` whose byte layout the
//!   tests patch (magic, version, counts, string lengths, dims, type ids, offsets);
//! - [`fixture`]: the `kimi-k25-tiny` Q8_0 fixture, re-emitted through `GgufWriter` with one
//!   metadata entry or tensor changed, for the errors `Model` raises (architecture, missing
//!   tensor, shape vs config).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;

use moe_kernels::GgmlType;
use moe_model::gguf::{GgufFile, GgufWriter, Value, GGUF_TENSORS_MAX};
use moe_model::model::Model;
use moe_model::ModelError;

/// Largest single allocation a parse of a file of a few hundred bytes may make, in bytes.
const SMALL_PARSE_ALLOC_BYTES_MAX: usize = 1 << 20;

// --- An allocator that records this thread's largest allocation ------------------------------

thread_local! {
    static LARGEST_ALLOC_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest request per thread (tests run on threads).
struct RecordingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; recording touches only a
// const-initialized thread-local `Cell<usize>`, which never allocates.
unsafe impl GlobalAlloc for RecordingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn record(bytes: usize) {
    // `try_with` fails only during thread teardown, when nothing is being measured.
    let _ = LARGEST_ALLOC_BYTES.try_with(|m| m.set(m.get().max(bytes)));
}

#[global_allocator]
static ALLOC: RecordingAlloc = RecordingAlloc;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_ALLOC_BYTES.with(|m| m.set(0));
    let out = f();
    (out, LARGEST_ALLOC_BYTES.with(Cell::get))
}

// --- Inputs -----------------------------------------------------------------------------------

/// A small valid GGUF: a string, a u32, a bool, a string array, and two F32 tensors.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let meta = [
        ("general.architecture", Value::String("deepseek2".into())),
        ("general.alignment", Value::U32(32)),
        ("demo.flag", Value::Bool(true)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                moe_model::gguf::ValueType::String,
                ["a", "bc", "def"]
                    .iter()
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        ),
    ];
    for (k, v) in meta {
        w.add_metadata(k, v).unwrap();
    }
    w.add_tensor("first.weight", GgmlType::F32, &[8, 2])
        .unwrap();
    w.add_tensor("second.weight", GgmlType::F32, &[32]).unwrap();
    let mut bytes = w.header_bytes();
    for (i, t) in w.tensors().iter().enumerate() {
        bytes.resize(bytes.len().next_multiple_of(32), 0);
        bytes.extend((0..t.nbytes).map(|b| (b as u8).wrapping_add(i as u8)));
    }
    bytes.resize(bytes.len().next_multiple_of(32), 0);
    GgufFile::from_bytes(bytes.clone()).expect("the unpatched small file parses");
    bytes
}

/// Byte offset of the first occurrence of `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", String::from_utf8_lossy(needle)))
}

/// Offset of the u32 `n_dims` field of tensor `name` in a header (it follows the name).
fn tensor_field(bytes: &[u8], name: &str) -> usize {
    find(bytes, name.as_bytes()) + name.len()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The kimi-k25-tiny Q8_0 fixture's bytes, read once.
fn fixture() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(fixture_path()).expect("reading the fixture"))
}

fn fixture_path() -> PathBuf {
    moe_devdata::fixtures::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf")
}

/// One tensor of a file being re-emitted: its declaration and its bytes.
struct TensorCopy {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
    data: Vec<u8>,
}

/// The fixture re-emitted through `GgufWriter` after `edit` changed its metadata or tensors.
fn fixture_edited(edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorCopy>)) -> Vec<u8> {
    let file = GgufFile::from_bytes(fixture().to_vec()).unwrap();
    let mut meta = file.metadata_entries().to_vec();
    let mut tensors: Vec<TensorCopy> = file
        .tensor_infos()
        .iter()
        .map(|t| TensorCopy {
            name: t.name.clone(),
            ty: t.ty,
            ne: t.ne[..t.n_dims as usize].to_vec(),
            data: file.tensor(&t.name).unwrap().data.to_vec(),
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(&k, v).unwrap();
    }
    for t in &tensors {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
    }
    let align = w.alignment() as usize;
    let mut bytes = w.header_bytes();
    for t in &tensors {
        bytes.resize(bytes.len().next_multiple_of(align), 0);
        bytes.extend_from_slice(&t.data);
    }
    bytes.resize(bytes.len().next_multiple_of(align), 0);
    bytes
}

fn set_meta(meta: &mut [(String, Value)], key: &str, value: Value) {
    let entry = meta.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = value;
}

// --- Assertions ------------------------------------------------------------------------------

/// Parses `bytes`, expecting an error (not a panic) whose message contains every `needle`.
fn parse_err(what: &str, bytes: Vec<u8>, needles: &[&str]) -> String {
    let result = catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(bytes)))
        .unwrap_or_else(|_| panic!("{what}: the reader panicked"));
    let err = result.expect_err(what).to_string();
    assert_contains(what, &err, needles);
    println!("{what}: {err}");
    err
}

/// Loads `bytes` as a model, expecting an error whose message contains every `needle`.
fn model_err(what: &str, bytes: Vec<u8>, needles: &[&str]) -> String {
    let file = GgufFile::from_bytes(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = Model::from_file(file).expect_err(what).to_string();
    assert_contains(what, &err, needles);
    println!("{what}: {err}");
    err
}

fn assert_contains(what: &str, message: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            message.contains(n),
            "{what}: error {message:?} does not mention {n:?}"
        );
    }
}

// --- Container-level errors -------------------------------------------------------------------

#[test]
fn every_header_prefix_is_refused_as_truncated() {
    // The fixture's whole header (metadata incl. tokenizer arrays, tensor table, padding).
    let bytes = fixture();
    let header_end = GgufFile::from_bytes(bytes.to_vec())
        .unwrap()
        .tensor_infos()
        .iter()
        .map(|t| t.offset)
        .min()
        .unwrap();
    for len in 0..header_end {
        let what = format!("fixture cut at byte {len}");
        parse_err(&what, bytes[..len].to_vec(), &["truncated"]);
    }
    // The same for every prefix of the small file, which ends with its data.
    let small = small_file();
    for len in 0..small.len() {
        let what = format!("small file cut at byte {len}");
        let result = catch_unwind(|| GgufFile::from_bytes(small[..len].to_vec()))
            .unwrap_or_else(|_| panic!("{what}: the reader panicked"));
        let err = result.expect_err(&what).to_string();
        assert!(
            err.contains("truncated") || err.contains("past the end of the file"),
            "{what}: {err}"
        );
    }
}

#[test]
fn files_cut_inside_tensor_data_name_a_tensor_past_the_end() {
    let bytes = fixture();
    let file = GgufFile::from_bytes(bytes.to_vec()).unwrap();
    let first_data = file.tensor_infos().iter().map(|t| t.offset).min().unwrap();
    let cuts = [
        first_data + 1,
        first_data + 4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 4096,
        bytes.len() - 1,
    ];
    for len in cuts {
        let what = format!("fixture cut at byte {len} of {}", bytes.len());
        let err = parse_err(
            &what,
            bytes[..len].to_vec(),
            &["extends past the end of the file"],
        );
        // The message names the tensor: one whose data is not all there.
        let named = file
            .tensor_infos()
            .iter()
            .filter(|t| t.offset + t.size > len)
            .any(|t| err.contains(&format!("{:?}", t.name)));
        assert!(named, "{what}: {err} names no tensor that was cut");
    }
}

#[test]
fn wrong_magic_is_refused() {
    let mut bytes = small_file();
    bytes[..4].copy_from_slice(b"GGML");
    parse_err("magic GGML", bytes, &["not a GGUF file", "magic"]);
    parse_err("empty file", Vec::new(), &["truncated", "magic"]);
}

#[test]
fn versions_other_than_3_are_refused() {
    for version in [1, 2, 4, u32::MAX] {
        let mut bytes = small_file();
        put_u32(&mut bytes, 4, version);
        parse_err(
            &format!("version {version}"),
            bytes,
            &[
                &format!("unsupported GGUF version {version}"),
                "only version 3",
            ],
        );
    }
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    // The recorder itself sees a large allocation.
    let (_, largest) = largest_alloc(|| vec![1u8; 2 * SMALL_PARSE_ALLOC_BYTES_MAX]);
    assert!(largest >= 2 * SMALL_PARSE_ALLOC_BYTES_MAX);
    let cases: [(&str, usize, u64, &[&str]); 4] = [
        (
            "tensor count 2^40",
            8,
            1 << 40,
            &["tensor count 1099511627776", "exceeds the limit"],
        ),
        (
            "metadata count 2^40",
            16,
            1 << 40,
            &["metadata count 1099511627776", "exceeds the limit"],
        ),
        // Below the limits, but more than the bytes left can hold.
        (
            "tensor count at the limit",
            8,
            GGUF_TENSORS_MAX,
            &["truncated", "cannot fit"],
        ),
        (
            "metadata count 2^20",
            16,
            1 << 20,
            &["truncated", "cannot fit"],
        ),
    ];
    for (what, at, count, needles) in cases {
        let mut bytes = small_file();
        put_u64(&mut bytes, at, count);
        let (_, largest) = largest_alloc(|| parse_err(what, bytes, needles));
        assert!(
            largest <= SMALL_PARSE_ALLOC_BYTES_MAX,
            "{what}: allocated {largest} bytes at once"
        );
    }
    // An array whose element count exceeds the file.
    let mut bytes = small_file();
    let count_at = find(&bytes, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len() + 8;
    put_u64(&mut bytes, count_at, 1 << 50);
    let (_, largest) = largest_alloc(|| {
        parse_err(
            "array of 2^50 strings",
            bytes,
            &["tokenizer.ggml.tokens", "array elements"],
        )
    });
    assert!(
        largest <= SMALL_PARSE_ALLOC_BYTES_MAX,
        "array: allocated {largest} bytes at once"
    );
    // One element over GGUF_ARRAY_ELEMS_MAX is refused by the limit itself; at the limit, by
    // the bytes that are there.
    let max = moe_model::gguf::GGUF_ARRAY_ELEMS_MAX;
    for (count, needle) in [
        (max + 1, "GGUF_ARRAY_ELEMS_MAX"),
        (max, "more than the file holds"),
    ] {
        let mut bytes = small_file();
        put_u64(&mut bytes, count_at, count);
        parse_err(
            "array at the element limit",
            bytes,
            &["tokenizer.ggml.tokens", needle],
        );
    }
}

#[test]
fn string_lengths_past_the_end_or_the_limit_are_refused() {
    // The architecture value's u64 length sits after the key, its u32 type tag.
    let value_len_at =
        find(&small_file(), b"general.architecture") + "general.architecture".len() + 4;
    let mut bytes = small_file();
    put_u64(&mut bytes, value_len_at, 100_000);
    parse_err(
        "string length 100000",
        bytes,
        &["truncated", "general.architecture", "needs 100000 bytes"],
    );
    let mut bytes = small_file();
    put_u64(&mut bytes, value_len_at, 1 << 60);
    parse_err(
        "string length 2^60",
        bytes,
        &["general.architecture", "exceeds the limit"],
    );
    // A key length (the first key's, right after the counts).
    let mut bytes = small_file();
    put_u64(&mut bytes, 24, 1 << 40);
    parse_err(
        "key length 2^40",
        bytes,
        &["metadata key #0", "exceeds the limit"],
    );
}

#[test]
fn bad_metadata_values_are_refused() {
    let small = small_file();
    let mut bytes = small.clone();
    let type_at = find(&bytes, b"demo.flag") + "demo.flag".len();
    put_u32(&mut bytes, type_at, 77);
    parse_err(
        "value type 77",
        bytes,
        &["demo.flag", "unknown value type 77"],
    );

    let mut bytes = small.clone();
    bytes[type_at + 4] = 2;
    parse_err("bool byte 2", bytes, &["demo.flag", "neither 0 nor 1"]);

    let mut bytes = small;
    let align_at = find(&bytes, b"general.alignment") + "general.alignment".len() + 4;
    put_u32(&mut bytes, align_at, 48);
    parse_err(
        "alignment 48",
        bytes,
        &["general.alignment", "power of two"],
    );
}

#[test]
fn bad_tensor_infos_are_refused() {
    let small = small_file();
    let dims_at = tensor_field(&small, "first.weight");
    // n_dims (u32), ne (2 × u64), type (u32), offset (u64).
    let (type_at, offset_at) = (dims_at + 4 + 16, dims_at + 4 + 16 + 4);

    for n_dims in [0, 5, u32::MAX] {
        let mut bytes = small.clone();
        put_u32(&mut bytes, dims_at, n_dims);
        parse_err(
            &format!("n_dims {n_dims}"),
            bytes,
            &["\"first.weight\"", &format!("{n_dims} dims"), "1..=4"],
        );
    }
    for (id, name) in [(39, "MXFP4"), (99, "unknown")] {
        let mut bytes = small.clone();
        put_u32(&mut bytes, type_at, id);
        parse_err(
            &format!("type id {id}"),
            bytes,
            &[
                "\"first.weight\"",
                &format!("unsupported ggml tensor type {name} (id {id})"),
            ],
        );
    }
    let mut bytes = small.clone();
    put_u32(&mut bytes, type_at, GgmlType::Q8_0.id());
    parse_err(
        "Q8_0 with rows of 8",
        bytes,
        &["\"first.weight\"", "row length 8", "Q8_0 block size 32"],
    );
    let mut bytes = small.clone();
    put_u64(&mut bytes, dims_at + 4, u64::MAX / 2);
    parse_err("ne overflowing", bytes, &["\"first.weight\"", "overflows"]);

    for offset in [4096, u64::MAX - 31] {
        let mut bytes = small.clone();
        put_u64(&mut bytes, offset_at, offset);
        parse_err(
            &format!("offset {offset}"),
            bytes,
            &["\"first.weight\"", "extends past the end of the file"],
        );
    }
    let mut bytes = small;
    put_u64(&mut bytes, offset_at, 4);
    parse_err(
        "offset 4",
        bytes,
        &["\"first.weight\"", "not aligned to 32"],
    );
}

#[test]
fn duplicate_tensor_names_are_refused() {
    // Two same-length names; the second patched to equal the first.
    let mut w = GgufWriter::new();
    w.add_tensor("a.weight", GgmlType::F32, &[8]).unwrap();
    w.add_tensor("b.weight", GgmlType::F32, &[8]).unwrap();
    let mut bytes = w.header_bytes();
    bytes.resize(bytes.len() + 64, 0);
    let at = find(&bytes, b"b.weight");
    bytes[at] = b'a';
    parse_err(
        "duplicate names",
        bytes,
        &["duplicate tensor name \"a.weight\""],
    );
}

#[test]
fn open_names_the_path_of_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    std::fs::write(&path, &fixture()[..1000]).unwrap();
    let err = Model::open(&path).unwrap_err().to_string();
    assert_contains("cut file", &err, &[path.to_str().unwrap(), "truncated"]);

    let missing = dir.path().join("absent.gguf");
    let err = Model::open(&missing).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    assert_contains(
        "absent file",
        &err.to_string(),
        &[missing.to_str().unwrap()],
    );
}

// --- Model-level errors ------------------------------------------------------------------------

#[test]
fn the_unedited_fixture_loads() {
    Model::from_file(GgufFile::from_bytes(fixture_edited(|_, _| ())).unwrap()).unwrap();
}

#[test]
fn unsupported_architecture_is_named() {
    let bytes = fixture_edited(|meta, _| {
        set_meta(meta, "general.architecture", Value::String("llama".into()))
    });
    model_err(
        "llama",
        bytes,
        &["architecture \"llama\" is not supported", "deepseek2"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let gone = "blk.2.ffn_down_exps.weight";
    let bytes = fixture_edited(|_, tensors| tensors.retain(|t| t.name != gone));
    model_err(
        "missing tensor",
        bytes,
        &[&format!("missing tensor \"{gone}\"")],
    );
}

#[test]
fn tensor_shape_against_the_config_names_expected_and_got() {
    // One expert fewer in a stacked expert tensor (Q8_0, 128 x 32 per expert).
    let name = "blk.1.ffn_up_exps.weight";
    let bytes = fixture_edited(|_, tensors| {
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        assert_eq!(t.ne, [128, 32, 384]);
        t.ne[2] = 383;
        t.data.truncate(t.data.len() / 384 * 383);
    });
    model_err(
        "383 experts",
        bytes,
        &[
            &format!("\"{name}\""),
            "[128, 32, 383]",
            "expected [128, 32, 384]",
        ],
    );
    // A vector one element short.
    let name = "output_norm.weight";
    let bytes = fixture_edited(|_, tensors| {
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        t.ne[0] -= 1;
        t.data.truncate(t.data.len() - t.ty.block_bytes());
    });
    model_err(
        "short norm",
        bytes,
        &[
            &format!("\"{name}\""),
            "[127, 1, 1]",
            "expected [128, 1, 1]",
        ],
    );
}

#[test]
fn missing_or_absurd_metadata_is_named() {
    let bytes = fixture_edited(|meta, _| meta.retain(|(k, _)| k != "deepseek2.expert_count"));
    model_err(
        "no expert_count",
        bytes,
        &["\"deepseek2.expert_count\" is missing"],
    );

    let bytes =
        fixture_edited(|meta, _| set_meta(meta, "deepseek2.embedding_length", Value::U64(1 << 40)));
    model_err(
        "embedding 2^40",
        bytes,
        &["embedding_length 1099511627776", "outside"],
    );

    let bytes = fixture_edited(|meta, _| {
        set_meta(meta, "deepseek2.rope.dimension_count", Value::U64(1 << 40));
        set_meta(
            meta,
            "deepseek2.attention.key_length_mla",
            Value::U64((1 << 40) + 32),
        );
    });
    model_err(
        "rope dims 2^40",
        bytes,
        &["rope.dimension_count 1099511627776", "exceeds the limit"],
    );

    let bytes = fixture_edited(|meta, _| {
        set_meta(meta, "deepseek2.block_count", Value::String("four".into()))
    });
    model_err(
        "block_count string",
        bytes,
        &[
            "\"deepseek2.block_count\"",
            "should be a non-negative integer",
        ],
    );
}
