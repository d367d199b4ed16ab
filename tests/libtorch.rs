//! With the `train` feature, libtorch loads and computes: the rpath from build.rs and the
//! LIBTORCH set-up work for test binaries too.
#![cfg(feature = "train")]

#[test]
fn libtorch_computes() {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let s = f64::try_from(t.sum(tch::Kind::Float)).unwrap();
    assert_eq!(s, 6.0);
}
