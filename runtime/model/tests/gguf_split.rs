//! A model written as a `-00001-of-00002` split set opens from its first shard and computes
//! the same logits, bit for bit, as the single file it was split from.

use std::path::{Path, PathBuf};

use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::gguf::{GgufFile, GgufWriter, Value};
use moe_model::model::Model;

fn fixture() -> PathBuf {
    moe_devdata::fixtures::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf")
}

fn logits(model: &Model) -> Vec<u32> {
    let mut cache = KvCache::for_model(model, 64);
    let tokens = [447, 283, 72, 65, 266];
    let l = model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens: &tokens,
                all_logits: true,
                kind: TokenKind::Prompt { len: tokens.len() },
            }],
            &mut LocalExperts::default(),
            &mut NoObserver,
        )
        .unwrap();
    l[0].iter().map(|v| v.to_bits()).collect()
}

fn write_shard(
    src: &GgufFile,
    path: &Path,
    no: u16,
    count: u16,
    tensors: &[usize],
    with_metadata: bool,
) {
    let mut w = GgufWriter::new();
    if with_metadata {
        for (k, v) in src.metadata_entries() {
            if k != "general.alignment" {
                w.add_metadata(k, v.clone()).unwrap();
            }
        }
    }
    w.add_metadata("split.no", Value::U16(no)).unwrap();
    w.add_metadata("split.count", Value::U16(count)).unwrap();
    w.add_metadata(
        "split.tensors.count",
        Value::I32(src.tensor_infos().len() as i32),
    )
    .unwrap();
    let infos = src.tensor_infos();
    for &i in tensors {
        let t = &infos[i];
        w.add_tensor(&t.name, t.ty, &t.ne[..t.n_dims as usize])
            .unwrap();
    }
    let mut data = w.create(path).unwrap();
    for &i in tensors {
        data.write_tensor_data(src.tensor(&infos[i].name).unwrap().data)
            .unwrap();
    }
    data.finish().unwrap();
}

#[test]
fn split_set_opens_from_first_shard_and_matches_the_single_file() {
    let dir = std::env::temp_dir().join(format!("moe-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = GgufFile::open(fixture()).unwrap();
    let n = src.tensor_infos().len();
    let first: Vec<usize> = (0..n / 2).collect();
    let second: Vec<usize> = (n / 2..n).collect();
    write_shard(
        &src,
        &dir.join("tiny-00001-of-00002.gguf"),
        0,
        2,
        &first,
        true,
    );
    write_shard(
        &src,
        &dir.join("tiny-00002-of-00002.gguf"),
        1,
        2,
        &second,
        false,
    );

    let split = Model::open(dir.join("tiny-00001-of-00002.gguf")).unwrap();
    assert_eq!(split.file().paths().len(), 2);
    assert_eq!(logits(&split), logits(&Model::open(fixture()).unwrap()));

    // Opening a later shard, or a set with a shard missing, is an error naming the problem.
    let err = GgufFile::open(dir.join("tiny-00002-of-00002.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("first shard"), "{err}");
    std::fs::remove_file(dir.join("tiny-00002-of-00002.gguf")).unwrap();
    let err = GgufFile::open(dir.join("tiny-00001-of-00002.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny-00002-of-00002.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
