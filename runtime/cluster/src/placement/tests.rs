//! Placement parsing and validation: good files, and one test per refusal naming its line.

use super::*;

const MOE: [usize; 3] = [1, 2, 3];

fn parse(text: &str) -> Result<Placement, ClusterError> {
    Placement::parse(text, &MOE, 8)
}

fn node_error(text: &str) -> (String, String, String) {
    match parse(text) {
        Err(ClusterError::PlacementNode {
            location,
            node,
            message,
        }) => (location, node, message),
        other => panic!("expected PlacementNode error, got {other:?}"),
    }
}

const TWO_NODES: &str = r#"
[[node]]
name = "e1"
addr = "127.0.0.1:7001"    # or "local"
shards = "0-5"
[[node]]
name = "e2"
addr = "local"
metrics_addr = "127.0.0.1:9002"
shards = "4-7"
layers = { "3" = "0-1,6-7" }
"#;

#[test]
fn owners_and_replicas() {
    let p = parse(TWO_NODES).unwrap();
    assert_eq!(p.nodes().len(), 2);
    assert_eq!(p.moe_layers(), &MOE);
    assert_eq!(p.owners(1, 0), &[NodeIndex(0)]);
    assert_eq!(p.owners(1, 5), &[NodeIndex(0), NodeIndex(1)]);
    assert_eq!(p.owners(3, 0), &[NodeIndex(0), NodeIndex(1)]);
    assert_eq!(p.owners(3, 4), &[NodeIndex(0)]);
    assert_eq!(p.owners(3, 7), &[NodeIndex(1)]);
    assert!(p.owners(0, 0).is_empty(), "layer 0 is dense");
    assert!(p.owners(1, 8).is_empty(), "expert past the model");
    assert_eq!(p.experts_of(NodeIndex(1), 2).unwrap().to_string(), "4-7");
    assert_eq!(
        p.experts_of(NodeIndex(1), 3).unwrap().to_string(),
        "0-1,6-7"
    );
    assert!(p.experts_of(NodeIndex(2), 1).is_none());
    assert!(p.experts_of(NodeIndex(0), 0).is_none());
    assert_eq!(p.node_index("e2"), Some(NodeIndex(1)));
    let e2 = p.node(NodeIndex(1)).unwrap();
    assert_eq!(e2.addr, NodeAddr::Local);
    assert_eq!(
        e2.metrics_addr.as_ref().unwrap().to_string(),
        "127.0.0.1:9002"
    );
    assert_eq!(e2.location, "line 7");
}

#[test]
fn to_toml_round_trips() {
    let p = parse(TWO_NODES).unwrap();
    let again = parse(&p.to_toml()).unwrap();
    assert_eq!(
        (&again.owner_starts, &again.owner_list),
        (&p.owner_starts, &p.owner_list)
    );
    for (a, b) in again.nodes().iter().zip(p.nodes()) {
        assert_eq!(
            (&a.name, &a.addr, &a.metrics_addr),
            (&b.name, &b.addr, &b.metrics_addr)
        );
        assert_eq!(
            (&a.shards, &a.layer_overrides),
            (&b.shards, &b.layer_overrides)
        );
    }
}

#[test]
fn from_shards_single_node_and_cli_list() {
    let name = NodeName::new("solo").unwrap();
    let p = Placement::from_shards(
        &[(name.clone(), NodeAddr::Local, ExpertSet::full(8).unwrap())],
        &[3, 1, 2, 2],
        8,
    )
    .unwrap();
    assert_eq!(p.moe_layers(), &[1, 2, 3]);
    assert_eq!(p.owners(2, 7), &[NodeIndex(0)]);

    let half = ExpertSet::parse("0-3", 8).unwrap();
    let err = Placement::from_shards(&[(name, NodeAddr::Local, half)], &MOE, 8).unwrap_err();
    assert!(
        matches!(&err, ClusterError::ExpertUnowned { layer: 1, experts, .. } if experts == "4-7")
    );
}

#[test]
fn toml_syntax_error_names_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = 127.0.0.1:7001\n";
    match parse(text) {
        Err(ClusterError::PlacementSyntax { line, .. }) => assert_eq!(line, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_field_names_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshard = \"0-7\"\n";
    match parse(text) {
        Err(ClusterError::PlacementSyntax { line, message, .. }) => {
            assert_eq!(line, 4, "{message}");
            assert!(message.contains("shard"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_addr_is_a_syntax_error() {
    let err = parse("[[node]]\nname = \"e1\"\nshards = \"0-7\"\n").unwrap_err();
    assert!(err.to_string().contains("addr"), "{err}");
}

#[test]
fn wrong_type_names_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = 7\n";
    match parse(text) {
        Err(ClusterError::PlacementSyntax { line, .. }) => assert_eq!(line, 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_node_names_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-7\"\n\
                [[node]]\nname = \"e1\"\naddr = \"127.0.0.1:1\"\nshards = \"0-7\"\n";
    let (location, node, message) = node_error(text);
    assert_eq!((location.as_str(), node.as_str()), ("line 6", "e1"));
    assert!(
        message.contains("duplicate node name (first at line 2)"),
        "{message}"
    );
}

#[test]
fn duplicate_addr_names_both() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-7\"\n\
                [[node]]\nname = \"e2\"\naddr = \"local\"\n";
    let (location, _, message) = node_error(text);
    assert_eq!(location, "line 6");
    assert!(message.contains("\"e1\""), "{message}");
}

#[test]
fn bad_addr_names_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"127.0.0.1\"\nshards = \"0-7\"\n";
    let (location, node, message) = node_error(text);
    assert_eq!((location.as_str(), node.as_str()), ("line 3", "e1"));
    assert!(message.contains("no port"), "{message}");
}

#[test]
fn bad_name_names_line() {
    let (location, _, message) = node_error("[[node]]\nname = \"e 1\"\naddr = \"local\"\n");
    assert_eq!(location, "line 2");
    assert!(message.contains("' '"), "{message}");
}

#[test]
fn range_past_model_names_line_and_token() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-3,4-8\"\n";
    let (location, _, message) = node_error(text);
    assert_eq!(location, "line 4");
    assert!(
        message.contains("\"4-8\"") && message.contains("8 experts"),
        "{message}"
    );
}

#[test]
fn unknown_layer_key_names_line() {
    for key in ["0", "4", "x", "+1", "01x"] {
        let text = format!(
            "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-7\"\nlayers = {{ \"{key}\" = \"0-1\" }}\n"
        );
        let (location, _, message) = node_error(&text);
        assert_eq!(location, "line 5", "{key}");
        assert!(
            message.contains("not a MoE layer") && message.contains("1-3"),
            "{message}"
        );
    }
}

#[test]
fn bad_override_set_names_its_line() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-7\"\n\
                [node.layers]\n2 = \"0-1\"\n3 = \"0-x\"\n";
    let (location, _, message) = node_error(text);
    assert_eq!(location, "line 7");
    assert!(message.contains("\"0-x\""), "{message}");
}

#[test]
fn unowned_experts_name_layer_experts_and_overriding_node() {
    let text = "[[node]]\nname = \"e1\"\naddr = \"local\"\nshards = \"0-7\"\n\
                layers = { \"2\" = \"0-3\" }\n\
                [[node]]\nname = \"e2\"\naddr = \"127.0.0.1:7\"\nshards = \"5\"\n";
    let err = parse(text).unwrap_err();
    match &err {
        ClusterError::ExpertUnowned {
            layer,
            experts,
            hint,
        } => {
            assert_eq!((*layer, experts.as_str()), (2, "4,6-7"));
            assert!(hint.contains("\"e1\" at line 2"), "{hint}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "placement: MoE layer 2: experts 4,6-7 have no owner \
         (layer 2 is overridden by node \"e1\" at line 2)"
    );
}

#[test]
fn empty_file_owns_nothing() {
    let err = parse("").unwrap_err();
    assert!(err.to_string().contains("lists no node"), "{err}");
}

#[test]
fn model_shape_is_bounded() {
    assert!(Placement::parse(TWO_NODES, &[], 8).is_err());
    assert!(Placement::parse(TWO_NODES, &[MOE_LAYERS_MAX], 8).is_err());
    assert!(Placement::parse(TWO_NODES, &MOE, 0).is_err());
    assert!(Placement::parse(TWO_NODES, &MOE, EXPERTS_PER_LAYER_MAX + 1).is_err());
}

#[test]
fn too_many_nodes_and_too_long_file() {
    let mut text = String::new();
    for i in 0..=NODES_MAX {
        text.push_str(&format!(
            "[[node]]\nname = \"n{i}\"\naddr = \"127.0.0.1:{}\"\nshards = \"0-7\"\n",
            1000 + i
        ));
    }
    let (_, node, message) = node_error(&text);
    assert_eq!(node, format!("n{NODES_MAX}"));
    assert!(message.contains("NODES_MAX"), "{message}");

    let long = format!("# {}\n", "x".repeat(PLACEMENT_TEXT_BYTES_MAX));
    assert!(parse(&long)
        .unwrap_err()
        .to_string()
        .contains("PLACEMENT_TEXT_BYTES_MAX"));
}

#[test]
fn kimi_sized_placement() {
    // 60 MoE layers (1..=60), 384 experts, four nodes of 96 experts plus a replica node.
    let layers: Vec<usize> = (1..=60).collect();
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "[[node]]\nname = \"e{i}\"\naddr = \"127.0.0.1:{}\"\nshards = \"{}-{}\"\n",
            7000 + i,
            i * 96,
            i * 96 + 95
        ));
    }
    text.push_str("[[node]]\nname = \"hot\"\naddr = \"local\"\nlayers = { \"7\" = \"0-7\" }\n");
    let p = Placement::parse(&text, &layers, 384).unwrap();
    assert_eq!(p.owners(7, 3), &[NodeIndex(0), NodeIndex(4)]);
    assert_eq!(p.owners(8, 3), &[NodeIndex(0)]);
    assert_eq!(p.owners(60, 383), &[NodeIndex(3)]);
    assert!(p.experts_of(NodeIndex(4), 8).unwrap().is_empty());
}
