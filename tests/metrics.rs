//! Metrics against scikit-learn 1.9.1 on the same data (the script is in the comment below).
//!
//! ```python
//! from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
//! y = [0,0,0,1,1,2,2,2,2,3,3,0]; p = [0,1,0,1,1,2,0,2,4,3,1,0]
//! accuracy_score(y, p)           # 0.6666666666666666
//! balanced_accuracy_score(y, p)  # 0.6875
//! f1_score(y, p, average="macro")  # 0.5499999999999999 (over labels 0..4; 4 is only predicted)
//! [roc_auc_score(y == c, probs[:, c]) for c in range(4)]  # 0.96875, 1.0, 0.984375, 0.925
//! roc_auc_score([0,1,1,0,1,0,0,1], [0.1,0.4,0.35,0.8,0.4,0.4,0.2,0.9])  # 0.6875
//! ```

use clipit::metrics::{argmax_rows, binary_auroc, macro_auroc, ConfusionMatrix, Report};

const LABELS: [usize; 12] = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 0];
const PREDS: [usize; 12] = [0, 1, 0, 1, 1, 2, 0, 2, 4, 3, 1, 0];

fn probs() -> Vec<Vec<f32>> {
    [
        [0.6, 0.2, 0.1, 0.1, 0.0],
        [0.3, 0.4, 0.1, 0.1, 0.1],
        [0.5, 0.2, 0.1, 0.1, 0.1],
        [0.2, 0.5, 0.2, 0.1, 0.1],
        [0.1, 0.6, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.6, 0.1, 0.1],
        [0.4, 0.1, 0.3, 0.1, 0.1],
        [0.1, 0.1, 0.5, 0.2, 0.1],
        [0.1, 0.1, 0.2, 0.2, 0.4],
        [0.1, 0.1, 0.1, 0.6, 0.1],
        [0.1, 0.4, 0.1, 0.2, 0.1],
        [0.5, 0.1, 0.1, 0.2, 0.1],
    ]
    .iter()
    .map(|r| r.to_vec())
    .collect()
}

fn names() -> Vec<String> {
    ["ADI", "BACK", "DEB", "LYM", "MUC"].iter().map(|s| s.to_string()).collect()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn confusion_matrix_matches_sklearn() {
    let cm = ConfusionMatrix::from_predictions(&LABELS, &PREDS, 5).unwrap();
    assert_eq!(
        cm.rows(),
        vec![
            vec![3, 1, 0, 0, 0],
            vec![0, 2, 0, 0, 0],
            vec![1, 0, 2, 0, 1],
            vec![0, 1, 0, 1, 0],
            vec![0, 0, 0, 0, 0],
        ]
    );
    close(cm.accuracy(), 0.666_666_666_666_666_6);
    close(cm.balanced_accuracy(), 0.6875);
    close(cm.macro_f1(), 0.55);
    assert_eq!(cm.recall()[4], None);
    assert_eq!(cm.precision()[4], Some(0.0));
}

#[test]
fn auroc_matches_sklearn_with_ties() {
    let auc = binary_auroc(
        &[0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9],
        &[false, true, true, false, true, false, false, true],
    );
    close(auc.unwrap(), 0.6875);
    let p = probs();
    assert_eq!(argmax_rows(&p), PREDS);
    let expected = (0.96875 + 1.0 + 0.984375 + 0.925) / 4.0;
    close(macro_auroc(&p, &LABELS).unwrap().unwrap(), expected);
    // One class only: undefined, not an error.
    assert_eq!(macro_auroc(&p[..3], &[0, 0, 0]).unwrap(), None);
    assert_eq!(binary_auroc(&[0.1, 0.2], &[true, true]), None);
}

#[test]
fn report_and_text() {
    let report = Report::from_probs(&probs(), &LABELS, &names()).unwrap();
    close(report.balanced_accuracy, 0.6875);
    assert_eq!(report.n_samples, 12);
    assert_eq!(report.classes[2].support, 4);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["classes"][4]["recall"], serde_json::Value::Null);
    assert_eq!(json["confusion"][2][4], 1);

    let cm = ConfusionMatrix::from_predictions(&LABELS, &PREDS, 5).unwrap();
    let text = cm.to_text(&names());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(lines[0].starts_with("true \\ pred") && lines[0].ends_with("recall"), "{text}");
    assert!(lines[1].starts_with("ADI") && lines[1].ends_with("75.00%"), "{text}");
    assert!(lines[5].ends_with('-'), "{text}");
}

#[test]
fn bad_input_is_an_error() {
    assert!(ConfusionMatrix::from_predictions(&[0, 1], &[0], 2).is_err());
    assert!(ConfusionMatrix::from_predictions(&[], &[], 2).is_err());
    let e = ConfusionMatrix::from_predictions(&[0, 2], &[0, 1], 2).unwrap_err().to_string();
    assert!(e.contains("sample 1"), "{e}");
    assert!(macro_auroc(&[vec![0.5, 0.5], vec![0.5]], &[0, 1]).is_err());
    assert!(macro_auroc(&[vec![f32::NAN, 0.5]], &[0]).is_err());
    assert!(
        Report::new(&[0, 1], &[0, 1], &["a".into(), "b".into()], Some(&[vec![1.0, 0.0]])).is_err()
    );
}
