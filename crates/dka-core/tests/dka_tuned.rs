//! `ConvPath::Tuned`: the measurement draws nothing from the random generator (a tuned run's
//! random stream is an untuned one's), times every candidate, and its choice is kept per shape.
//! One test in this binary, because `manual_seed` is process-wide and tests run in threads.
use dka_core::dka::{measure_paths, tuned_choices, ConvPath, Kernels};
use tch::{Device, Kind, Tensor};

#[test]
fn tuning_leaves_the_random_stream_alone_and_keeps_one_choice_per_shape() {
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(11);
    let want = Tensor::randn([4], opts);

    tch::manual_seed(11);
    let times = measure_paths([2, 3, 6, 5], 11, 9, Kind::Float, Device::Cpu, 2);
    let mut paths: Vec<String> = times.iter().map(|t| format!("{:?}", t.path)).collect();
    paths.sort();
    assert_eq!(paths, ["Direct", "Fft", "FftToeplitz", "Toeplitz"]);
    assert!(times.iter().all(|t| t.ms.is_finite() && t.ms >= 0.0));

    // A module on the tuned path: measured at its first map, then the same choice.
    let k = |s: i64, f: f64| {
        ((Tensor::arange(3 * s * s, opts) * f).sin() * 0.1)
            .view([3, 1, s, s])
            .set_requires_grad(true)
    };
    let kernels = Kernels::Fixed {
        large: Some((k(51, 0.37), None)),
        small: Some((k(5, 0.71), None)),
    };
    let z = (Tensor::arange(2 * 3 * 7 * 7, opts) * 0.13)
        .cos()
        .view([2, 3, 7, 7]);
    let tuned = kernels.forward(&z, ConvPath::Tuned);
    let reference = kernels.forward(&z, ConvPath::Reference);
    let err = (&tuned - &reference).abs().max().double_value(&[]);
    assert!(
        err < 1e-5,
        "tuned path differs from the reference by {err:e}"
    );
    let first = tuned_choices();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].2, [2, 3, 7, 7, 13, 13]);
    let _ = kernels.forward(&z, ConvPath::Tuned);
    assert_eq!(
        tuned_choices(),
        first,
        "a second map of the shape measured again"
    );

    assert_eq!(
        Tensor::randn([4], opts),
        want,
        "tuning drew from the random generator"
    );
}
