//! Double-double arithmetic for prefix sums.
//!
//! A window sum taken as the difference of two prefix sums loses the digits the prefix has
//! grown past; carrying each prefix as an unevaluated sum of two f64 (~106 bits) keeps window
//! sums of a long history as exact as summing the window directly.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dd {
    hi: f64,
    lo: f64,
}

#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

#[inline]
fn quick_two_sum(a: f64, b: f64) -> Dd {
    let s = a + b;
    Dd {
        hi: s,
        lo: b - (s - a),
    }
}

impl Dd {
    pub const ZERO: Dd = Dd { hi: 0.0, lo: 0.0 };

    /// The value as stored by a reuse state: (high, low) parts.
    #[inline]
    pub fn parts(self) -> (f64, f64) {
        (self.hi, self.lo)
    }

    #[inline]
    pub fn from_parts(hi: f64, lo: f64) -> Dd {
        Dd { hi, lo }
    }

    #[inline]
    pub fn from_f64(x: f64) -> Dd {
        Dd { hi: x, lo: 0.0 }
    }

    /// The exact square of `x` as a double-double.
    #[inline]
    pub fn square(x: f64) -> Dd {
        let p = x * x;
        Dd {
            hi: p,
            lo: x.mul_add(x, -p),
        }
    }

    #[inline]
    pub fn add_f64(self, b: f64) -> Dd {
        let (s, e) = two_sum(self.hi, b);
        quick_two_sum(s, e + self.lo)
    }

    #[inline]
    pub fn add(self, o: Dd) -> Dd {
        let (s, e) = two_sum(self.hi, o.hi);
        quick_two_sum(s, e + self.lo + o.lo)
    }

    #[inline]
    pub fn sub(self, o: Dd) -> Dd {
        self.add(Dd {
            hi: -o.hi,
            lo: -o.lo,
        })
    }

    #[inline]
    pub fn mul(self, o: Dd) -> Dd {
        let p = self.hi * o.hi;
        let e = self.hi.mul_add(o.hi, -p) + self.hi * o.lo + self.lo * o.hi;
        quick_two_sum(p, e)
    }

    #[inline]
    pub fn div_f64(self, d: f64) -> Dd {
        let q = self.hi / d;
        // one Newton step on the remainder
        let r = self.sub(Dd::from_f64(q).mul(Dd::from_f64(d)));
        quick_two_sum(q, r.hi / d)
    }

    #[inline]
    pub fn to_f64(self) -> f64 {
        self.hi + self.lo
    }
}

/// A running sum of f64 whose loop-carried chain is one add. Each step's rounding error is
/// exact (two_sum) and gathers apart in `lo` (Neumaier's scheme); [`RunningSum::value`]
/// normalizes without feeding back. `Dd::add_f64` renormalizes every step, a chain of seven
/// dependent adds per value, which made a key's prefix sums latency-bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunningSum {
    hi: f64,
    lo: f64,
}

impl RunningSum {
    #[inline]
    pub fn add(&mut self, v: f64) {
        let (s, e) = two_sum(self.hi, v);
        self.hi = s;
        self.lo += e;
    }

    #[inline]
    pub fn value(self) -> Dd {
        quick_two_sum(self.hi, self.lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_difference_keeps_small_window_exact() {
        let mut p = Dd::ZERO;
        let big = Dd::ZERO.add_f64(1e17);
        p = p.add(big);
        let before = p;
        for x in [0.1, 0.2, 0.3] {
            p = p.add_f64(x);
        }
        let w = p.sub(before).to_f64();
        assert_eq!(w, 0.1 + 0.2 + 0.3);
    }

    #[test]
    fn running_sum_keeps_what_plain_addition_loses() {
        let mut r = RunningSum::default();
        let mut d = Dd::ZERO;
        for x in [1e17, 0.1, 0.2, 0.3, -1e17, 3.0] {
            r.add(x);
            d = d.add_f64(x);
        }
        assert_eq!(r.value().to_f64(), 0.1 + 0.2 + 0.3 + 3.0);
        assert_eq!(r.value().to_f64(), d.to_f64());
        // the prefix difference of a small window after a huge value stays exact
        let mut p = RunningSum::default();
        p.add(1e17);
        let before = p.value();
        for x in [0.1, 0.2, 0.3] {
            p.add(x);
        }
        assert_eq!(p.value().sub(before).to_f64(), 0.1 + 0.2 + 0.3);
    }

    #[test]
    fn square_is_exact() {
        let x = 1.0 + f64::EPSILON;
        let s = Dd::square(x);
        assert_eq!(s.hi, 1.0 + 2.0 * f64::EPSILON);
        assert_eq!(s.lo, f64::EPSILON * f64::EPSILON);
    }
}
