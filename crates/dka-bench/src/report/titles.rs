//! Titles that say what ran: the datasets, training fractions, backbones, weights and draws
//! of the runs a table or figure shows, collected from the runs themselves (never from the
//! experiment file, which names the paper's setting: that goes in a subtitle at most).
use crate::config::metrics::metric_title;
use crate::report::plots::short_name;
use crate::report::plots::style::dataset_label;
use std::collections::BTreeSet;

/// What the runs behind a table or figure are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunsShown {
    datasets: Vec<String>,
    fractions: Vec<String>,
    backbones: Vec<String>,
    weights: Vec<String>,
    draws: BTreeSet<u32>,
}

fn push_new(v: &mut Vec<String>, s: String) {
    if !s.is_empty() && !v.contains(&s) {
        v.push(s);
    }
}

/// `a`, `a and b`, `a, b and c`; more than `max` items are counted instead.
fn list(items: &[String], max: usize, what: &str) -> String {
    match items.len() {
        0 => "?".into(),
        n if n > max => format!("{n} {what}"),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

impl RunsShown {
    /// One run: its dataset and fraction as the config names them, its backbone spec, its draw.
    pub fn add_run(&mut self, dataset: &str, fraction: &str, backbone: &str, draw: u32) {
        push_new(&mut self.datasets, dataset_label(dataset));
        push_new(&mut self.fractions, fraction.to_string());
        push_new(&mut self.backbones, short_name(backbone));
        self.draws.insert(draw);
    }

    /// A weights label as the runs record it (`file (sha256 …)` or `random init`).
    pub fn add_weights(&mut self, label: &str) {
        push_new(&mut self.weights, label.to_string());
    }

    /// `<metric> (%): <datasets> at <fractions> of the training data; <backbones>
    /// (<weights>); <n> draw(s)`.
    pub fn title(&self, metric: &str) -> String {
        let metric = if metric == "primary" {
            "score".to_string()
        } else {
            metric_title(metric).to_string()
        };
        format!(
            "{metric} (%): {} at {} of the training data; {} ({}); {} draw(s)",
            list(&self.datasets, 4, "datasets"),
            list(&self.fractions, 4, "fractions"),
            list(&self.backbones, 3, "backbones"),
            list(&self.weights, 2, "weights files"),
            self.draws.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_name_what_ran_not_the_paper_setting() {
        let mut s = RunsShown::default();
        for draw in 0..3 {
            s.add_run("folder", "1.25%", "runs/tiny/vit.json", draw);
            s.add_run("folder", "100%", "runs/tiny/vit.json", draw);
        }
        s.add_weights("random init");
        assert_eq!(
            s.title("accuracy"),
            "accuracy (%): image folder at 1.25% and 100% of the training data; vit \
             (random init); 3 draw(s)"
        );
        let mut two = RunsShown::default();
        two.add_run("busi-cls", "0.63%", "vit_base_patch16_224", 0);
        two.add_run("isic2019", "0.63%", "vit_base_patch16_224", 0);
        assert!(two.title("miou_foreground").starts_with(
            "foreground IoU (%): BUSI and ISIC-2019 at 0.63% of the training data; \
             vit_base_patch16_224 (?)"
        ));
    }
}
