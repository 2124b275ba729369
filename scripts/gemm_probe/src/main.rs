//! GEMM probe (issue 16): the machine's peak f32 FMA rate, and single products at the ViT-B
//! shapes through three routes: gemm with its own rayon threading (`gemm`, as upstream burn-flex
//! calls it), gemm single-threaded per band with the output split once over the pool (`split`,
//! patches/burn-flex), and matrixmultiply's kernels (`mm`, AVX-512 where the CPU has it).
//! Prints GFLOP/s of wall time and per CPU-second; checks every route against gemm's result.
//!
//!     cd scripts/gemm_probe && cargo run --release -- peak
//!     RAYON_NUM_THREADS=1 cargo run --release -- 1
//!     RAYON_NUM_THREADS=2 cargo run --release -- 2
//!
//! x86_64 only (the peak loop uses AVX-512 and AVX2 intrinsics). Its own workspace: the main
//! build never compiles it.
mod peak;
use std::time::Instant;

fn cpu_time() -> f64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(2, &mut ts) }; // CLOCK_PROCESS_CPUTIME_ID
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32;
}

/// `C[m × n]` (row stride `ldc`) = `A[m × k]` (row-major, row stride `lda`) × `B` (strides `rsb`,
/// `csb`) through gemm.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    (rsb, csb): (isize, isize),
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        false,
        a,
        1,
        lda as isize,
        b,
        csb,
        rsb,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// The same product through matrixmultiply.
unsafe fn mm_f32(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    (rsb, csb): (isize, isize),
) {
    matrixmultiply::sgemm(m, k, n, 1.0, a, lda as isize, 1, b, rsb, csb, 0.0, c, ldc as isize, 1);
}

/// Runs `f(start, size)` on the rayon pool for each of at most `parts` bands of `0..len`, each a
/// multiple of `align` long (the last one shorter).
fn bands(len: usize, parts: usize, align: usize, f: impl Fn(usize, usize) + Sync) {
    let per = len.div_ceil(parts.max(1)).div_ceil(align) * align;
    rayon::scope(|s| {
        for start in (0..len).step_by(per) {
            let f = &f;
            s.spawn(move |_| f(start, per.min(len - start)));
        }
    });
}

/// One product through `route`; `a` is `m × k` row-major, `b` is `k × n` row-major (or `n × k`
/// row-major when `bt`: a column-major view of `k × n`).
fn run(
    route: &str,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    bt: bool,
    threads: usize,
) {
    let strides = if bt { (1isize, k as isize) } else { (n as isize, 1isize) };
    let csb = strides.1;
    // Addresses, so that the bands' closures can share them across threads.
    let (a, b, c) = (a.as_ptr() as usize, b.as_ptr() as usize, c.as_mut_ptr() as usize);
    let (ap, bp, cp) = (
        |i: usize| (a as *const f32).wrapping_add(i),
        |j: isize| (b as *const f32).wrapping_offset(j),
        |i: usize| (c as *mut f32).wrapping_add(i),
    );
    let par = |t: usize| if t > 1 { gemm::Parallelism::Rayon(t) } else { gemm::Parallelism::None };
    match route {
        "gemm" => unsafe { gemm_f32((m, n, k), cp(0), n, ap(0), k, bp(0), strides, par(threads)) },
        // gemm single-threaded per band; the larger of m and n split once.
        "split" if m >= n => bands(m, threads, 8, |i0, mm| unsafe {
            gemm_f32((mm, n, k), cp(i0 * n), n, ap(i0 * k), k, bp(0), strides, par(1))
        }),
        "split" => bands(n, threads, 16, |j0, nn| unsafe {
            gemm_f32((m, nn, k), cp(j0), n, ap(0), k, bp(j0 as isize * csb), strides, par(1))
        }),
        "mm" if threads <= 1 => unsafe { mm_f32((m, n, k), cp(0), n, ap(0), k, bp(0), strides) },
        // matrixmultiply in column bands (multiples of 16).
        "mm" => bands(n, threads, 16, |j0, nn| unsafe {
            mm_f32((m, nn, k), cp(j0), n, ap(0), k, bp(j0 as isize * csb), strides)
        }),
        _ => unreachable!(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|s| s.as_str()) == Some("peak") {
        let iters = 200_000_000usize;
        for (name, w) in [("avx512", 16.0), ("avx2", 8.0)] {
            let t = Instant::now();
            let r = unsafe {
                if w == 16.0 {
                    peak::peak512(iters)
                } else {
                    peak::peak256(iters)
                }
            };
            let s = t.elapsed().as_secs_f64();
            println!("{name}: {:.1} GFLOP/s ({r})", iters as f64 * 12.0 * w * 2.0 / s / 1e9);
        }
        return;
    }
    let threads: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let shapes = [
        (400, 768, 2304, false),
        (400, 768, 768, false),
        (400, 768, 3072, false),
        (400, 3072, 768, false),
        (392, 3072, 768, false),
        (1576, 768, 2304, false),
        (1576, 768, 3072, false),
        (1576, 3072, 768, false),
        (768, 400, 3072, false),
        (1024, 1024, 1024, false),
        (400, 768, 2304, true),
        (400, 768, 3072, true),
        (50, 64, 50, false),
    ];
    for &(m, k, n, bt) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01).collect();
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        run("gemm", (m, k, n), &a, &b, &mut c1, bt, threads);
        run("mm", (m, k, n), &a, &b, &mut c2, bt, threads);
        let mut c3 = vec![0f32; m * n];
        run("split", (m, k, n), &a, &b, &mut c3, bt, threads);
        let maxd3 = c1.iter().zip(&c3).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(maxd3 < 1e-4, "split differs {maxd3}");
        let maxd = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let mut line =
            format!("{m:>5}x{k:>5}x{n:>5}{} maxdiff {maxd:.1e}", if bt { "T" } else { " " });
        for route in ["gemm", "split", "mm"] {
            let flops = 2.0 * (m * n * k) as f64;
            let reps = ((1e10 / flops) as usize).clamp(3, 2000);
            let (w0, c0) = (Instant::now(), cpu_time());
            for _ in 0..reps {
                run(route, (m, k, n), &a, &b, &mut c1, bt, threads);
            }
            let (w, c) = (w0.elapsed().as_secs_f64(), cpu_time() - c0);
            line += &format!(
                "  {route}: {:6.1} GF/s wall {:6.1} GF/cpu-s",
                flops * reps as f64 / w / 1e9,
                flops * reps as f64 / c / 1e9
            );
        }
        println!("{line}");
    }
}
