//! The data an evaluation runs on: a run's own split (rebuilt from its config and checked
//! against its manifest), or every record of another dataset with the run's classes (an
//! external test set).
use super::data::{open, split_spec, RunData};
use crate::config::run::RunConfig;
use anyhow::{bail, Context};
use dka_data::{Dataset, DecodedSplit, Manifest, Preprocess, Split, SplitName, Task};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Records of one dataset to evaluate, and how their classes map to the run's.
pub struct EvalData {
    pub ds: Arc<dyn Dataset>,
    /// The records evaluated, in order.
    pub indices: Vec<usize>,
    pub manifest: Manifest,
    pub cache_dir: PathBuf,
    /// The run's own split (`Some(split)`) or external data (`None`: every record).
    pub split: Option<SplitName>,
    /// The data's class index → the run's, when they come in another order.
    pub remap: Option<Vec<i64>>,
    /// Said once to the user: how the classes were matched, when not one to one by name.
    pub class_note: Option<String>,
}

impl EvalData {
    /// Split `which` of the run's own data.
    pub fn own_split(data: RunData, which: SplitName) -> Self {
        Self {
            indices: data.indices(which).to_vec(),
            ds: data.ds,
            manifest: data.manifest,
            cache_dir: data.cache_dir,
            split: Some(which),
            remap: None,
            class_note: None,
        }
    }

    /// Every record of `ds`, whose classes must be the run's (`run_task`): the same names in
    /// any order, or as many classes under other names (matched by position, said in
    /// [`Self::class_note`]).
    pub fn external(
        ds: Arc<dyn Dataset>,
        cfg: &RunConfig,
        run_task: &Task,
        cache_dir: &Path,
    ) -> anyhow::Result<Self> {
        let (remap, class_note) = class_map(run_task, ds.task(), ds.name(), ds.root())?;
        let indices: Vec<usize> = (0..ds.records().len()).collect();
        anyhow::ensure!(
            !indices.is_empty(),
            "{} at {}: no records to evaluate",
            ds.name(),
            ds.root().display()
        );
        let split = Split {
            train: Vec::new(),
            val: Vec::new(),
            test: indices.clone(),
        };
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("the cache folder {}", cache_dir.display()))?;
        let (manifest, _) = Manifest::build_cached(
            ds.as_ref(),
            &split_spec(cfg)?,
            &cfg.data_options,
            &split,
            Some(cache_dir),
        )?;
        Ok(Self {
            ds,
            indices,
            manifest,
            cache_dir: cache_dir.to_path_buf(),
            split: None,
            remap,
            class_note,
        })
    }

    /// Opens `name` at `root` as a run (`cfg`, resolved) evaluates it: the run's own split
    /// `which` when this is the run's dataset and its manifest is the run's
    /// (`run_manifest`, a content hash), else every record as external data (`which` must
    /// then be `None`).
    pub fn open(
        cfg: &RunConfig,
        run_task: &Task,
        run_manifest: &str,
        name: &str,
        root: &Path,
        cache_dir: &Path,
        which: Option<SplitName>,
    ) -> anyhow::Result<Self> {
        if name == cfg.dataset {
            let data = RunData::open(cfg, root, cache_dir)?;
            if data.split_sha256 == run_manifest {
                return Ok(Self::own_split(data, which.unwrap_or(SplitName::Test)));
            }
            if which.is_some() {
                bail!(
                    "{name} at {}: not the data this run was trained on (its manifest.json \
                     differs), so it has no split of the run's; leave out --split to evaluate \
                     every record as external data",
                    root.display()
                );
            }
            tracing::warn!(
                "{name} at {}: not the data this run was trained on (its manifest.json differs): \
                 every record is evaluated, as external data",
                root.display()
            );
            return Self::external(data.ds, cfg, run_task, cache_dir);
        }
        if which.is_some() {
            bail!(
                "--split picks a split of the run's own data ({}); external data ({name}) is \
                 evaluated whole",
                cfg.dataset
            );
        }
        Self::external(
            open(name, root, &cfg.data_options)?,
            cfg,
            run_task,
            cache_dir,
        )
    }

    /// What was evaluated, in words.
    pub fn describe(&self) -> String {
        match self.split {
            Some(s) => format!(
                "the {} split of {} ({} records; the run's own)",
                s.as_str(),
                self.ds.name(),
                self.indices.len()
            ),
            None => format!(
                "{} at {} ({} records, external)",
                self.ds.name(),
                self.ds.root().display(),
                self.indices.len()
            ),
        }
    }

    /// The records decoded at `pre`'s geometry (through the decoded-image cache).
    pub fn decoded(&self, pre: &Preprocess, threads: usize) -> anyhow::Result<Arc<DecodedSplit>> {
        let bar = crate::util::progress::bar(self.indices.len() as u64, "decoding");
        let progress = |done: usize, _total: usize| bar.set_position(done as u64);
        let (split, _) = DecodedSplit::open_or_build(
            self.ds.as_ref(),
            &self.indices,
            pre,
            &self.manifest,
            &self.cache_dir,
            threads,
            &progress,
        )
        .with_context(|| format!("decoding {}", self.describe()))?;
        bar.finish_and_clear();
        Ok(Arc::new(split))
    }

    /// The name a per-case row gives record `pos` (a position in [`Self::indices`]): its
    /// case (a volume) when the dataset has cases, else its first file.
    pub fn case_name(&self, pos: usize) -> String {
        let i = self.indices[pos];
        match self.ds.case_of(i) {
            Some(case) => case.to_string(),
            None => {
                let r = &self.ds.records()[i];
                r.files
                    .first()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| r.id.clone())
            }
        }
    }

    /// Whether rows are volume cases (several records each) rather than images.
    pub fn has_cases(&self) -> bool {
        self.indices
            .first()
            .is_some_and(|&i| self.ds.case_of(i).is_some())
    }
}

/// How the classes of data (`data`) map to a run's (`run`): `None` when they are the same
/// names in the same order, a map when the same names come in another order, `None` with a
/// note when only their number agrees (matched by position); an error when the kinds of task
/// or the numbers of classes differ.
pub fn class_map(
    run: &Task,
    data: &Task,
    name: &str,
    root: &Path,
) -> anyhow::Result<(Option<Vec<i64>>, Option<String>)> {
    let kind = |t: &Task| {
        if t.is_segmentation() {
            "segmentation"
        } else {
            "classification"
        }
    };
    let (rc, dc) = (run.classes(), data.classes());
    if kind(run) != kind(data) {
        bail!(
            "{name} at {} is a {} dataset; the run does {}",
            root.display(),
            kind(data),
            kind(run)
        );
    }
    if rc == dc {
        return Ok((None, None));
    }
    let norm = |s: &String| s.trim().to_lowercase();
    let by_name: Option<Vec<i64>> = (rc.len() == dc.len())
        .then(|| {
            dc.iter()
                .map(|d| rc.iter().position(|r| norm(r) == norm(d)).map(|p| p as i64))
                .collect()
        })
        .flatten();
    if let Some(map) = by_name {
        let mut seen = map.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() == rc.len() {
            let note = format!("classes matched by name: data {dc:?} → run {rc:?}");
            let identity = map.iter().enumerate().all(|(i, &m)| i as i64 == m);
            return Ok(((!identity).then_some(map), Some(note)));
        }
    }
    if rc.len() == dc.len() {
        return Ok((
            None,
            Some(format!(
                "the class names differ, so classes are matched by position: data {dc:?} → \
                 run {rc:?}"
            )),
        ));
    }
    bail!(
        "{name} at {} has {} classes {dc:?}; the run has {} {rc:?}",
        root.display(),
        dc.len(),
        rc.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cls(names: &[&str]) -> Task {
        Task::Classification {
            classes: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn classes_map_by_name_then_position_else_refuse() {
        let p = Path::new("/d");
        let run = cls(&["benign", "malignant", "normal"]);
        assert_eq!(class_map(&run, &run, "x", p).unwrap(), (None, None));
        let (m, note) = class_map(&run, &cls(&["Normal", "benign", "malignant"]), "x", p).unwrap();
        assert_eq!(m, Some(vec![2, 0, 1]));
        assert!(note.unwrap().contains("by name"));
        let (m, note) = class_map(&run, &cls(&["a", "b", "c"]), "x", p).unwrap();
        assert_eq!(m, None);
        assert!(note.unwrap().contains("by position"));
        let e = class_map(&run, &cls(&["a", "b"]), "x", p).unwrap_err();
        assert!(e.to_string().contains("has 2 classes"), "{e}");
        let seg = Task::Segmentation {
            classes: vec!["background".into(), "lesion".into()],
        };
        let e = class_map(&seg, &cls(&["a", "b"]), "x", p).unwrap_err();
        assert!(e.to_string().contains("classification dataset"), "{e}");
    }
}
