use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn paper_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments/paper")
        .join(name)
}

const METHODS: [&str; 11] = dka_baselines::NAMES;
const FRACTIONS: [&str; 3] = ["0.63%", "1.25%", "100%"];

fn rec(id: &str, method: &str, draw: u32, acc: Option<f64>, failed: bool) -> RunRecord {
    RunRecord {
        id: id.into(),
        status: if failed { Status::Failed } else { Status::Ok },
        axes: BTreeMap::from([
            ("dataset".to_string(), "busi-cls".to_string()),
            ("fraction".to_string(), "1.25%".to_string()),
            ("method".to_string(), method.to_string()),
            ("draw".to_string(), draw.to_string()),
        ]),
        metrics: BTreeMap::from([
            ("accuracy".to_string(), acc),
            ("auc".to_string(), acc.map(|a| a / 2.0)),
        ]),
        info: BTreeMap::from([
            ("backbone".to_string(), "vit_quick.json".to_string()),
            ("weights".to_string(), "random init".to_string()),
            ("selection".to_string(), "last epoch".to_string()),
            ("precision".to_string(), "fp32".to_string()),
            ("device".to_string(), "cpu".to_string()),
        ]),
        error: failed.then(|| "boom".to_string()),
        finished_utc: String::new(),
    }
}

fn spec<'a>(paper: Option<&'a PaperTable>) -> TableSpec<'a> {
    TableSpec {
        title: "Table X".into(),
        subtitle: Some("The paper's setting: Table X".into()),
        metric: "accuracy".into(),
        extra: vec!["auc".into()],
        row_axis: "method".into(),
        row_order: s(&["full", "bitfit", "lora", "dka"]),
        col_axes: s(&["dataset", "fraction"]),
        col_orders: vec![s(&["busi-cls"]), s(&["1.25%"])],
        paper,
        notes: vec!["BUSI: 3 classes.".into()],
        profile: Some("quick".into()),
    }
}

#[test]
fn cells_are_mean_and_sample_std_over_draws_with_the_paper_beside() {
    let d = tempfile::tempdir().unwrap();
    // Two draws of dka, one finished and one failed of full, one without a finite value
    // of bitfit, none of lora.
    let records = [
        rec("a", "dka", 0, Some(0.70), false),
        rec("b", "dka", 1, Some(0.80), false),
        rec("c", "full", 0, Some(0.5), false),
        rec("d", "full", 1, None, true),
        rec("e", "bitfit", 0, None, false),
    ];
    let paper = PaperTable {
        scores: vec![("DKA".into(), "BUSI".into(), "1.25%".into(), 79.46)],
    };
    let refs: Vec<&RunRecord> = records.iter().collect();
    aggregate(d.path(), &spec(Some(&paper)), &refs, 3).unwrap();
    let csv = std::fs::read_to_string(d.path().join("table.csv")).unwrap();
    // dka: mean (70+80)/2 = 75, sample std sqrt(((70-75)² + (80-75)²) / (2-1)) = 7.07;
    // its AUC values 35 and 40: mean 37.5, std 3.54.
    assert_eq!(
        csv,
        "method,dataset,fraction,mean,std,n,failed,paper,metric,auc_mean,auc_std,\
         diff_vs_dka,diff_vs_dka_ci_low,diff_vs_dka_ci_high,diff_vs_dka_boot_low,diff_vs_dka_boot_high,p_vs_dka,pairs_vs_dka,\
         best_baseline,diff_vs_best,diff_vs_best_ci_low,diff_vs_best_ci_high,diff_vs_best_boot_low,diff_vs_best_boot_high,p_vs_best,pairs_vs_best\n\
         full,busi-cls,1.25%,50.00,0.00,1,1,,accuracy,25.00,0.00,-20.00,,,,,,1,full,,,,,,,\n\
         dka,busi-cls,1.25%,75.00,7.07,2,0,79.46,accuracy,37.50,3.54,,,,,,,,full,20.00,,,,,,1\n"
    );
    let md = std::fs::read_to_string(d.path().join("table.md")).unwrap();
    assert!(md.starts_with("# Table X\n\n*The paper's setting: Table X*\n\naccuracy (%) — backbone vit_quick.json (weights: random init); profile quick; selection: last epoch; precision fp32 on cpu; mean ± sample std over 1–2 draw(s) per cell."), "{md}");
    assert!(md.contains("transcribed from its poster"), "{md}");
    assert!(md.contains("| method | busi-cls 1.25% | paper |"), "{md}");
    assert!(md.contains("| full | 50.00 (n=1) (1 failed) |  |"), "{md}");
    assert!(md.contains("| bitfit | – |  |"), "{md}");
    assert!(md.contains("| lora | – |  |"), "{md}");
    assert!(md.contains("| dka | 75.00 ± 7.07 | 79.46 |"), "{md}");
    assert!(
        md.contains("1 finished run(s) had no finite accuracy"),
        "{md}"
    );
    assert!(
        md.contains("3 older run(s) in runs.csv are not part of this grid"),
        "{md}"
    );
    assert!(md.contains("- BUSI: 3 classes."), "{md}");
}

#[test]
fn differences_against_dka_and_the_best_baseline_are_tested_per_cell() {
    let d = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for (m, v) in [
        ("dka", [0.70, 0.80, 0.75]),
        ("lora", [0.69, 0.81, 0.74]),
        ("full", [0.50, 0.55, 0.52]),
    ] {
        for (i, x) in v.iter().enumerate() {
            records.push(rec(&format!("{m}{i}"), m, i as u32, Some(*x), false));
        }
    }
    let refs: Vec<&RunRecord> = records.iter().collect();
    aggregate(d.path(), &spec(None), &refs, 0).unwrap();
    let mut r = csv::Reader::from_path(d.path().join("table.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let rows: Vec<BTreeMap<String, String>> = r
        .records()
        .map(|x| {
            h.iter()
                .zip(x.unwrap().iter())
                .map(|(a, b)| (a.into(), b.into()))
                .collect()
        })
        .collect();
    let by = |m: &str| rows.iter().find(|x| x["method"] == m).unwrap();
    // Expected values from SciPy 1.17.1 (ttest_rel; t.interval(0.95, n-1, loc, sem)):
    // lora − dka = [-1, 1, -1]: interval (-3.2018, 2.5351), p = 0.6667;
    // full − dka = [-20, -25, -23]: interval (-28.9183, -16.4151), p = 0.004084;
    // full − lora (the best baseline) = [-19, -26, -22]: (-31.0573, -13.6093), p = 0.008142;
    // dka − lora = [1, -1, 1]: (-2.5351, 3.2018), p = 0.6667.
    let l = by("lora");
    assert_eq!(
        [
            &l["diff_vs_dka"],
            &l["diff_vs_dka_ci_low"],
            &l["diff_vs_dka_ci_high"],
            &l["p_vs_dka"],
            &l["pairs_vs_dka"]
        ],
        ["-0.33", "-3.20", "2.54", "0.6667", "3"]
    );
    assert_eq!(l["best_baseline"], "lora");
    assert_eq!(l["diff_vs_best"], "", "the best baseline against itself");
    let f = by("full");
    assert_eq!(
        [
            &f["diff_vs_dka"],
            &f["diff_vs_dka_ci_low"],
            &f["diff_vs_dka_ci_high"],
            &f["p_vs_dka"]
        ],
        ["-22.67", "-28.92", "-16.42", "0.0041"]
    );
    assert_eq!(
        [
            &f["diff_vs_best"],
            &f["diff_vs_best_ci_low"],
            &f["diff_vs_best_ci_high"],
            &f["p_vs_best"]
        ],
        ["-22.33", "-31.06", "-13.61", "0.0081"]
    );
    let k = by("dka");
    assert_eq!(
        [
            &k["diff_vs_best"],
            &k["diff_vs_best_ci_low"],
            &k["diff_vs_best_ci_high"],
            &k["p_vs_best"]
        ],
        ["0.33", "-2.54", "3.20", "0.6667"]
    );
    assert_eq!(k["diff_vs_dka"], "");
    // The bootstrap interval lies within the range of the differences.
    let (lo, hi): (f64, f64) = (
        k["diff_vs_best_boot_low"].parse().unwrap(),
        k["diff_vs_best_boot_high"].parse().unwrap(),
    );
    assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi) && lo <= hi);
    let md = std::fs::read_to_string(d.path().join("table.md")).unwrap();
    assert!(md.contains("| lora | 74.67 ± 6.03 † |"), "{md}");
    assert!(md.contains("| full | 52.33 ± 2.52 |"), "{md}");
    assert!(md.contains("| dka | 75.00 ± 5.00 † |"), "{md}");
    assert!(md.contains("†: not distinguishable from dka"), "{md}");
    assert!(
        md.contains("| busi-cls 1.25% | lora | +0.33 | [-2.54, 3.20] | 0.6667 | 3 |"),
        "{md}"
    );
}

#[test]
fn columns_follow_the_given_orders_first_axis_slowest() {
    let c = combinations(&[s(&["covid", "brats"]), s(&["1.25%", "100%"])]);
    let joined: Vec<String> = c.iter().map(|x| x.join(" ")).collect();
    assert_eq!(
        joined,
        ["covid 1.25%", "covid 100%", "brats 1.25%", "brats 100%"]
    );
    let d = tempfile::tempdir().unwrap();
    let mut t = spec(None);
    t.col_orders = vec![s(&["busi-cls"])];
    assert!(
        aggregate(d.path(), &t, &[], 0).is_err(),
        "orders must match the axes"
    );
}

#[test]
fn our_names_map_to_the_papers() {
    let paper_names = [
        "Full Fine-tuning",
        "Linear Probing",
        "BitFit",
        "Prompt",
        "LoRA",
        "Adapter",
        "Adapterformer",
        "Convpass",
        "CIAT",
        "AIM",
        "DKA",
    ];
    for (ours, theirs) in METHODS.iter().zip(paper_names) {
        assert_eq!(paper_method(ours), theirs);
    }
    assert_eq!(
        paper_method("64"),
        "64",
        "other rows (d̂, variants) pass through"
    );
    for (ours, theirs) in [
        ("covid", "COVID"),
        ("busi-cls", "BUSI"),
        ("busi-seg", "BUSI"),
        ("isic2019", "ISIC-2019"),
        ("isic2018", "ISIC-2018"),
        ("brats", "BRATS"),
    ] {
        assert!(paper_datasets(ours).contains(&theirs), "{ours}");
    }
    assert!(paper_datasets("mni152").is_empty());
}

#[test]
fn every_paper_number_is_reachable_from_our_names() {
    let t = PaperTable::load(&paper_file("table2_classification_acc.csv"), "method").unwrap();
    for m in METHODS {
        for d in ["covid", "busi-cls", "isic2019"] {
            for f in FRACTIONS {
                assert!(t.get(m, d, f).is_some(), "{m} {d} {f}");
            }
        }
    }
    assert_eq!(t.get("dka", "busi-cls", "1.25%"), Some(79.46));
    let t = PaperTable::load(&paper_file("table2_segmentation_miou.csv"), "method").unwrap();
    for m in METHODS {
        for d in ["brats", "busi-seg", "isic2018"] {
            for f in FRACTIONS {
                assert!(t.get(m, d, f).is_some(), "{m} {d} {f}");
            }
        }
    }
    assert_eq!(t.get("full", "brats", "0.63%"), Some(9.25));
    let t = PaperTable::load(&paper_file("table1_medical_pretrained.csv"), "method").unwrap();
    assert_eq!(t.get("full", "isic2019", "0.63%"), Some(52.70));
    assert_eq!(t.get("full", "busi-seg", "0.63%"), Some(36.21));
    let t = PaperTable::load(&paper_file("table3_middle_dim.csv"), "d_hat").unwrap();
    assert_eq!(t.get("1", "busi-cls", "0.63%"), Some(65.02));
    assert!(t.get("64", "isic2018", "100%").is_some());
    let t = PaperTable::load(&paper_file("table3b_learnable_kernel.csv"), "variant").unwrap();
    assert_eq!(
        t.get("learnable kernel sizes", "covid", "0.63%"),
        Some(88.98)
    );
    assert!(t.get("51x51 + 5x5", "covid", "100%").is_some());
    assert!(PaperTable::load(&paper_file("table3b_learnable_kernel.csv"), "method").is_err());
}
