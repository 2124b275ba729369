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

fn run(
    route: &str,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    bt: bool,
    threads: usize,
) {
    // a: m x k row-major; b: k x n row-major (or n x k row-major when bt: col-major k x n view)
    let (rsb, csb) = if bt { (1isize, k as isize) } else { (n as isize, 1isize) };
    match route {
        "gemm" => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                csb,
                rsb,
                0.0,
                1.0,
                false,
                false,
                false,
                if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                },
            );
        },
        "split" => {
            // gemm single-threaded per part; split the larger of m and n once
            let cp = c.as_mut_ptr() as usize;
            let parts = threads.max(1);
            rayon::scope(|s| {
                for t in 0..parts {
                    if m >= n {
                        let per = ((m + parts - 1) / parts + 7) / 8 * 8;
                        let i0 = t * per;
                        if i0 >= m {
                            continue;
                        }
                        let mm = per.min(m - i0);
                        s.spawn(move |_| unsafe {
                            let c = cp as *mut f32;
                            gemm::gemm(
                                mm,
                                n,
                                k,
                                c.add(i0 * n),
                                1,
                                n as isize,
                                false,
                                a.as_ptr().add(i0 * k),
                                1,
                                k as isize,
                                b.as_ptr(),
                                csb,
                                rsb,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        });
                    } else {
                        let per = ((n + parts - 1) / parts + 15) / 16 * 16;
                        let j0 = t * per;
                        if j0 >= n {
                            continue;
                        }
                        let nn = per.min(n - j0);
                        s.spawn(move |_| unsafe {
                            let c = cp as *mut f32;
                            gemm::gemm(
                                m,
                                nn,
                                k,
                                c.add(j0),
                                1,
                                n as isize,
                                false,
                                a.as_ptr(),
                                1,
                                k as isize,
                                b.as_ptr().offset(j0 as isize * csb),
                                csb,
                                rsb,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        });
                    }
                }
            });
        }
        "mm" => {
            if threads <= 1 {
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        rsb,
                        csb,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                };
            } else {
                // split n in `threads` column blocks (multiple of 16)
                let per = ((n + threads - 1) / threads + 15) / 16 * 16;
                let cp = c.as_mut_ptr() as usize;
                rayon::scope(|s| {
                    for t in 0..threads {
                        let j0 = t * per;
                        if j0 >= n {
                            continue;
                        }
                        let nn = per.min(n - j0);
                        s.spawn(move |_| unsafe {
                            let c = cp as *mut f32;
                            matrixmultiply::sgemm(
                                m,
                                k,
                                nn,
                                1.0,
                                a.as_ptr(),
                                k as isize,
                                1,
                                b.as_ptr().offset(j0 as isize * csb),
                                rsb,
                                csb,
                                0.0,
                                c.add(j0),
                                n as isize,
                                1,
                            )
                        });
                    }
                });
            }
        }
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
        run("gemm", m, k, n, &a, &b, &mut c1, bt, threads);
        run("mm", m, k, n, &a, &b, &mut c2, bt, threads);
        let mut c3 = vec![0f32; m * n];
        run("split", m, k, n, &a, &b, &mut c3, bt, threads);
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
                run(route, m, k, n, &a, &b, &mut c1, bt, threads);
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
