//! `table.md`: the paper's layout under a title, each cell mean ± std with its marks (†, the
//! number of draws where fewer, failed runs), the notes on the runs actually made, and DKA
//! against the best baseline per column.
use super::{compare, provenance, Table};
use crate::config::metrics::metric_title;
use crate::config::record::RunRecord;
use std::fmt::Write as _;

impl Table<'_> {
    /// One markdown cell: mean ± std, † when indistinguishable from its reference, the
    /// number of draws when fewer than elsewhere, failed runs. Also says what was marked.
    fn md_cell(
        &self,
        row: &str,
        c: &[String],
        tests: &compare::CellTests,
        marks: &mut Marks,
    ) -> String {
        let mut s = String::new();
        match self.get(row, c, &self.t.metric) {
            Some(x) => {
                s += &format!(" {:.2}", x.mean);
                if x.n > 1 {
                    s += &format!(" ± {:.2}", x.std);
                }
                match tests.indistinguishable(row) {
                    Some(true) => {
                        s += " †";
                        marks.dagger = true;
                        marks.test = true;
                    }
                    Some(false) => marks.test = true,
                    None => {}
                }
                if x.n < self.draws.1 {
                    s += &format!(" (n={})", x.n);
                }
            }
            None => s += " –",
        }
        let nfail = self.failed(row, c);
        if nfail > 0 {
            marks.failed = true;
            s += &format!(" ({nfail} failed)");
        }
        s + " |"
    }

    /// The table in the paper's layout, under its title, subtitle and provenance line.
    fn md_table(
        &self,
        records: &[&RunRecord],
        md: &mut String,
        marks: &mut Marks,
    ) -> std::fmt::Result {
        let t = self.t;
        writeln!(md, "# {}\n", t.title)?;
        if let Some(s) = &t.subtitle {
            writeln!(md, "*{s}*\n")?;
        }
        writeln!(
            md,
            "{} (%) — {}.\n",
            metric_title(&t.metric),
            provenance(records, t.profile.as_deref(), self.draws)
        )?;
        let mut line = format!("| {} |", t.row_axis);
        for c in &self.combos {
            line += &format!(" {} |", c.join(" "));
            if self.paper {
                line += " paper |";
            }
        }
        writeln!(md, "{line}")?;
        let n_cols = self.combos.len() * if self.paper { 2 } else { 1 };
        writeln!(md, "|---|{}", "---:|".repeat(n_cols))?;
        for row in &t.row_order {
            let mut line = format!("| {row} |");
            for (c, tests) in self.combos.iter().zip(&self.tests) {
                line += &self.md_cell(row, c, tests, marks);
                if self.paper {
                    let ps = self
                        .paper_for(row, c)
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_default();
                    line += &format!(" {ps} |");
                }
            }
            writeln!(md, "{line}")?;
        }
        Ok(())
    }

    /// The notes under the table: the paper column, extra metrics, the tests, failed and left-out runs.
    fn notes(&self, marks: &Marks, left_out: usize) -> Vec<String> {
        let t = self.t;
        let dka = compare::dka_row(&t.row_order);
        let mut notes: Vec<String> = Vec::new();
        if self.paper {
            notes.push(
                "\"paper\": the paper's own number, not ours, transcribed from its poster; where the \
                 poster does not name a column's dataset the assignment is inferred (see \
                 experiments/paper/README.md)."
                    .into(),
            );
        }
        if !t.extra.is_empty() {
            notes.push(format!(
                "table.csv also holds {} per cell.",
                t.extra
                    .iter()
                    .map(|m| metric_title(m).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if marks.test {
            let reference = match dka {
                Some(d) => format!(
                    "from {d} (for {d}'s own row: from the cell's best baseline, the other row with the highest mean)"
                ),
                None => "from the cell's best row (the row with the highest mean)".to_string(),
            };
            notes.push(format!(
                "†: not distinguishable {reference}: the paired t 95 % confidence interval of the mean per-draw difference (same split, same draw index) contains 0{}. Unmarked cells differ at that level, or have fewer than two paired draws (no test). table.csv has every difference in points with its paired t interval (`*_ci_low/high`), a percentile-bootstrap 95 % interval (`*_boot_low/high`, {} resamples, seeded) and the paired t-test's p-value, against {} and against the best baseline.",
                if marks.dagger { "" } else { " (no cell is so marked)" },
                crate::report::paired::BOOTSTRAP_RESAMPLES,
                dka.map_or("DKA (none here)".to_string(), |d| d.clone()),
            ));
        }
        if marks.failed {
            notes.push("(k failed): runs of the cell that ended with an error (runs.csv, column `error`); they are not in the mean.".into());
        }
        if self.g.no_value > 0 {
            notes.push(format!(
                "{} finished run(s) had no finite {} and are left out.",
                self.g.no_value, t.metric
            ));
        }
        if left_out > 0 {
            notes.push(format!(
                "{left_out} older run(s) in runs.csv are not part of this grid (other settings, weights or data) and are left out."
            ));
        }
        notes.extend(t.notes.iter().cloned());
        notes
    }

    /// DKA against the best baseline per column, for the columns with a test.
    fn md_dka_vs_best(&self, md: &mut String) -> std::fmt::Result {
        let Some(d) = compare::dka_row(&self.t.row_order) else {
            return Ok(());
        };
        let lines: Vec<String> = self
            .combos
            .iter()
            .zip(&self.tests)
            .filter_map(|(c, x)| {
                let best = x.best.as_ref()?;
                let p = x.rows.get(d)?.vs_best.as_ref()?;
                // Only cells with a test (two or more paired draws).
                p.t_ci95?;
                let ci = p
                    .t_ci95
                    .map_or("–".to_string(), |(lo, hi)| format!("[{lo:.2}, {hi:.2}]"));
                let pv = p.p_value.map_or("–".to_string(), compare::format_p);
                Some(format!(
                    "| {} | {best} | {:+.2} | {ci} | {pv} | {} |",
                    c.join(" "),
                    p.mean_diff,
                    p.n
                ))
            })
            .collect();
        if lines.is_empty() {
            return Ok(());
        }
        writeln!(
            md,
            "\n{d} against the best baseline (points; paired by draw; 95 % paired t interval; paired t-test):\n"
        )?;
        writeln!(
            md,
            "| column | best baseline | {d} − best | 95 % CI | p | pairs |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|---:|")?;
        for l in lines {
            writeln!(md, "{l}")?;
        }
        Ok(())
    }

    /// `table.md`.
    pub(super) fn markdown(
        &self,
        records: &[&RunRecord],
        left_out: usize,
    ) -> anyhow::Result<String> {
        let mut md = String::new();
        let mut marks = Marks::default();
        self.md_table(records, &mut md, &mut marks)?;
        let notes = self.notes(&marks, left_out);
        self.md_dka_vs_best(&mut md)?;
        if !notes.is_empty() {
            writeln!(md)?;
            for n in notes {
                writeln!(md, "- {n}")?;
            }
        }
        Ok(md)
    }
}

/// What the markdown cells were marked with, for the notes.
#[derive(Default)]
struct Marks {
    failed: bool,
    dagger: bool,
    test: bool,
}
