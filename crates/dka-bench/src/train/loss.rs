//! The training loss: cross-entropy (+ soft Dice for segmentation if asked), ignoring padded
//! pixels.
use crate::config::run::SegLoss;
use tch::{Kind, Tensor};

/// Pixels of this class are ignored by the loss and the metrics (padding of `longest-side-pad`).
pub const IGNORE_INDEX: i64 = 255;

/// Cross-entropy (+ soft Dice for segmentation if asked), ignoring [`IGNORE_INDEX`].
pub fn loss(logits: &Tensor, y: &Tensor, seg_loss: SegLoss) -> Tensor {
    let ce = logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, IGNORE_INDEX, 0.0);
    if logits.dim() == 2 || seg_loss == SegLoss::Ce {
        return ce;
    }
    let c = logits.size()[1];
    let valid = y.ne(IGNORE_INDEX).unsqueeze(1).to_kind(Kind::Float);
    let p = logits.softmax(1, Kind::Float) * &valid;
    let onehot = y
        .where_scalarother(&y.ne(IGNORE_INDEX), 0)
        .one_hot(c)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        * &valid;
    let dims = [0i64, 2, 3];
    let inter = (&p * &onehot).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let denom = p.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let dice = (inter * 2.0 + 1.0) / (denom + 1.0);
    ce + (1.0 - dice.mean(Kind::Float))
}
