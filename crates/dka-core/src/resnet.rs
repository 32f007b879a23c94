//! ResNet (He et al., CVPR 2016) with timm / torchvision state-dict names:
//! `conv1, bn1, layerK.N.{conv1..3, bn1..3, downsample.0, downsample.1}, fc`.
//! Bottleneck blocks put the stride on the 3x3 conv (ResNet v1.5, as both libraries do).
//! Each residual block exposes [`MapSites`] (around the block, and a delta on each of its
//! convolutions); the model has an input site (`input_prompt`, visual prompt padding). With
//! every site empty the output equals timm's.
use crate::error::{CoreError, Result};
use crate::reduced;
use crate::sites::{conv_with, ConvSpec, MapModule, MapSites};
use serde::{Deserialize, Serialize};
use std::rc::Rc;
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResNetConfig {
    pub block: BlockKind,
    pub layers: Vec<i64>,
    /// Planes of each stage (timm's `channels`; the block's output is planes x expansion).
    pub channels: Vec<i64>,
    pub in_chans: i64,
    pub num_classes: i64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            block: BlockKind::Bottleneck,
            layers: vec![3, 4, 6, 3],
            channels: vec![64, 128, 256, 512],
            in_chans: 3,
            num_classes: 1000,
        }
    }
}

impl ResNetConfig {
    pub fn preset(name: &str) -> Option<Self> {
        let (block, layers) = match name {
            "resnet18" => (BlockKind::Basic, vec![2, 2, 2, 2]),
            "resnet34" => (BlockKind::Basic, vec![3, 4, 6, 3]),
            "resnet50" => (BlockKind::Bottleneck, vec![3, 4, 6, 3]),
            "resnet101" => (BlockKind::Bottleneck, vec![3, 4, 23, 3]),
            _ => return None,
        };
        Some(Self {
            block,
            layers,
            ..Self::default()
        })
    }

    pub fn num_features(&self) -> i64 {
        self.channels.last().copied().unwrap_or(64) * self.block.expansion()
    }

    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() || self.layers.len() > 4 || self.layers.iter().any(|&n| n < 1) {
            return Err(CoreError::Invalid(format!(
                "resnet layers {:?}: 1 to 4 stages of at least one block",
                self.layers
            )));
        }
        if self.channels.len() != self.layers.len() || self.channels.iter().any(|&c| c < 1) {
            return Err(CoreError::Invalid(format!(
                "resnet channels {:?} must give one positive width per stage of {:?}",
                self.channels, self.layers
            )));
        }
        if self.in_chans < 1 || self.num_classes < 0 {
            return Err(CoreError::Invalid(
                "in_chans must be positive and num_classes >= 0".into(),
            ));
        }
        Ok(())
    }
}

/// The stem's 7x7 conv: kernel, stride, padding (tch keeps a conv's geometry private, and a
/// frozen conv runs through [`reduced::conv2d`], which is given it).
const STEM: (i64, i64, i64) = (7, 2, 3);

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        },
    )
}

/// A bias-free conv with its geometry: `conv_spec(path, c_in, c_out, kernel, stride)` with
/// padding `kernel / 2`.
fn conv_spec(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
) -> (nn::Conv2D, ConvSpec) {
    let spec = ConvSpec {
        c_in,
        c_out,
        kernel,
        stride,
        padding: kernel / 2,
    };
    (conv(p, c_in, c_out, kernel, stride, kernel / 2), spec)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// One residual block (basic: two 3x3 convs; bottleneck: 1x1, 3x3, 1x1).
#[derive(Debug)]
pub struct ResBlock {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    /// Geometry of `conv1`, `conv2` (and `conv3`), in order.
    pub conv_specs: Vec<ConvSpec>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub stride: i64,
    pub sites: MapSites,
}

impl ResBlock {
    fn new(p: nn::Path, kind: BlockKind, cin: i64, planes: i64, stride: i64) -> Self {
        let cout = planes * kind.expansion();
        // (c_in, c_out, kernel, stride) of conv1, conv2 (, conv3).
        let shapes = match kind {
            BlockKind::Basic => vec![(cin, planes, 3, stride), (planes, planes, 3, 1)],
            BlockKind::Bottleneck => vec![
                (cin, planes, 1, 1),
                (planes, planes, 3, stride),
                (planes, cout, 1, 1),
            ],
        };
        let (mut convs, mut conv_specs) = (Vec::new(), Vec::new());
        for (i, &(ci, co, k, s)) in shapes.iter().enumerate() {
            let (c, spec) = conv_spec(&p / format!("conv{}", i + 1), ci, co, k, s);
            convs.push((c, bn(&p / format!("bn{}", i + 1), co)));
            conv_specs.push(spec);
        }
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                conv(&p / "downsample" / "0", cin, cout, 1, stride, 0),
                bn(&p / "downsample" / "1", cout),
            )
        });
        Self {
            convs,
            conv_specs,
            downsample,
            in_channels: cin,
            out_channels: cout,
            stride,
            sites: MapSites::default(),
        }
    }

    fn forward_t(&self, x: &Tensor, bn_train: bool, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, ((c, b), spec)) in self.convs.iter().zip(&self.conv_specs).enumerate() {
            h = b.forward_t(
                &conv_with(c, spec, &self.sites.convs[i], &h, train),
                bn_train,
            );
            if i < last {
                h = h.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((c, b)) => b.forward_t(&reduced::conv2d(c, x, self.stride, 0, 1), bn_train),
            None => x.shallow_clone(),
        };
        let y = (h + shortcut).relu();
        let y = match &self.sites.parallel {
            Some(m) => y + m.forward_t(x, train),
            None => y,
        };
        match &self.sites.after_block {
            Some(m) => {
                let out = m.forward_t(&y, train);
                if crate::probe::on() {
                    crate::probe::record("map", &y, &(&out - &y));
                }
                out
            }
            None => y,
        }
    }
}

#[derive(Debug)]
pub struct ResNet {
    pub cfg: ResNetConfig,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    /// `stages[k][n]` is timm's `layer{k+1}.{n}`.
    pub stages: Vec<Vec<ResBlock>>,
    fc: Option<nn::Linear>,
    /// Use running statistics even in training mode (a frozen backbone's BatchNorm must not
    /// drift); full fine-tuning turns this off.
    pub freeze_bn: bool,
    /// Input site: maps the image batch before the stem (visual prompt padding).
    pub input_prompt: Option<Rc<dyn MapModule>>,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: ResNetConfig) -> Result<Self> {
        cfg.validate()?;
        let (k, stride, pad) = STEM;
        let conv1 = conv(p / "conv1", cfg.in_chans, 64, k, stride, pad);
        let bn1 = bn(p / "bn1", 64);
        let mut cin = 64;
        let mut stages = Vec::new();
        for (k, &n) in cfg.layers.iter().enumerate() {
            let planes = cfg.channels[k];
            let stride = if k == 0 { 1 } else { 2 };
            let blocks = (0..n)
                .map(|i| {
                    let b = ResBlock::new(
                        p / format!("layer{}", k + 1) / i,
                        cfg.block,
                        cin,
                        planes,
                        if i == 0 { stride } else { 1 },
                    );
                    cin = b.out_channels;
                    b
                })
                .collect();
            stages.push(blocks);
        }
        let fc = (cfg.num_classes > 0)
            .then(|| crate::layers::linear(p / "fc", cin, cfg.num_classes, true));
        Ok(Self {
            cfg,
            conv1,
            bn1,
            stages,
            fc,
            freeze_bn: true,
            input_prompt: None,
        })
    }

    pub fn check_input(&self, shape: &[i64]) -> Result<()> {
        match shape {
            [_, c, h, w] if *c == self.cfg.in_chans && *h >= 32 && *w >= 32 => Ok(()),
            _ => Err(CoreError::InputShape {
                name: "input".into(),
                shape: shape.to_vec(),
                expected: format!("[batch, {}, H, W] with H, W >= 32", self.cfg.in_chans),
            }),
        }
    }

    /// timm's `forward_features`: the last stage's map `[batch, C, H/32, W/32]`.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Tensor {
        let bn_train = train && !self.freeze_bn;
        let x = match &self.input_prompt {
            Some(m) => m.forward_t(x, train),
            None => x.shallow_clone(),
        };
        let mut h = self
            .bn1
            .forward_t(
                &reduced::conv2d(&self.conv1, &x, STEM.1, STEM.2, 1),
                bn_train,
            )
            .relu();
        h = h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for b in stage {
                h = b.forward_t(&h, bn_train, train);
            }
        }
        h
    }

    /// Global average pool, `[batch, C]`.
    pub fn pool(&self, features: &Tensor) -> Tensor {
        features.mean_dim([2i64, 3].as_slice(), false, None)
    }

    pub fn head(&self) -> Option<&nn::Linear> {
        self.fc.as_ref()
    }

    /// The residual blocks of the selected stages (0-based; `None` = all) as
    /// `(stage, index, block)`: block `(k, i)` is timm's `layer{k+1}.{i}`.
    pub fn blocks_mut(
        &mut self,
        stages: &Option<Vec<usize>>,
    ) -> Vec<(usize, usize, &mut ResBlock)> {
        self.stages
            .iter_mut()
            .enumerate()
            .filter(|(k, _)| crate::sites::selected(stages, *k))
            .flat_map(|(k, stage)| stage.iter_mut().enumerate().map(move |(i, b)| (k, i, b)))
            .collect()
    }
}
