//! `plan --estimate`'s table: tokens, FLOPs, peak memory and time per
//! instance that would run, the totals, and what does not fit.

use babelflow::engine::device::Device;
use babelflow::engine::estimate::{InstanceCost, PlanCost};
use babelflow::engine::Action;
use babelflow_stage::estimate::Basis;

/// `1.2 G`, `350 K`: counts at a glance.
pub fn si(value: f64) -> String {
    let units = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "K"),
    ];
    for (scale, unit) in units {
        if value.abs() >= scale {
            return format!("{:.1} {unit}", value / scale);
        }
    }
    format!("{value:.0}")
}

pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// "23.54 GiB of memory (MemTotal …)", or the source alone where the
/// memory is unknown (the largest u64: nothing is checked against it).
fn memory_of(bytes: u64, source: &str) -> String {
    match bytes {
        u64::MAX => format!("memory {source}"),
        bytes => format!("{} of memory ({source})", gib(bytes)),
    }
}

pub fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 0.1 => format!("{:.0} ms", s * 1000.0),
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.1} min", s / 60.0),
        s if s < 48.0 * 3600.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

fn basis(b: Basis) -> &'static str {
    match b {
        Basis::Measured => "measured",
        Basis::Params => "params",
        Basis::Derived => "derived",
        Basis::Assumed => "assumed",
    }
}

fn row(cost: &InstanceCost, width: usize) -> Option<String> {
    let work = cost.work.as_ref()?;
    let flops = work.train_flops + work.forward_flops;
    let time = cost.seconds.map(duration).unwrap_or_else(|| "?".into());
    let procs = if cost.processes > 1 {
        format!(" ×{}", cost.processes)
    } else {
        String::new()
    };
    Some(format!(
        "  {:width$}  {:>9} {:8}  {:>10}  {:>10}{}  {:>9}{procs}",
        cost.name,
        si(work.tokens.value),
        basis(work.tokens.basis),
        format!("{}FLOP", si(flops)),
        gib(work.memory.total_bytes()),
        if cost.over_memory { " !" } else { "  " },
        time,
    ))
}

pub fn print(cost: &PlanCost) {
    let device: &Device = &cost.device;
    println!();
    println!(
        "estimate on {}: {}",
        device.name,
        memory_of(device.memory_bytes, &device.memory_source)
    );
    match (&device.throughput, &device.throughput_hint) {
        (Some(t), _) => {
            let rates: Vec<String> = t
                .rates
                .iter()
                .map(|r| {
                    let width = if r.hidden_size == 0 {
                        String::new()
                    } else {
                        format!(" at width {}", r.hidden_size)
                    };
                    format!(
                        "{}FLOP/s train, {}FLOP/s forward{width}",
                        si(r.train_flops_per_s),
                        si(r.forward_flops_per_s)
                    )
                })
                .collect();
            println!("  throughput {} ({})", rates.join("; "), t.source);
        }
        (None, Some(hint)) => println!("  time unknown: {hint}"),
        (None, None) => {}
    }
    let running: Vec<&InstanceCost> = cost.instances.iter().filter(|c| c.action == Action::Run).collect();
    let width = running.iter().map(|c| c.name.len()).max().unwrap_or(8).max(8);
    println!(
        "  {:width$}  {:>9} {:8}  {:>10}  {:>10}    {:>9}",
        "instance", "tokens", "from", "FLOPs", "peak mem", "time"
    );
    for line in running.iter().filter_map(|c| row(c, width)) {
        println!("{line}");
    }
    let t = &cost.totals;
    println!(
        "  {:width$}  {:>9} {:8}  {:>10}  {:>10}    {:>9}",
        "total",
        si(t.tokens),
        "",
        format!("{}FLOP", si(t.train_flops + t.forward_flops)),
        gib(t.peak_bytes),
        t.seconds.map(duration).unwrap_or_else(|| "?".into()),
    );
    if let Some(hours) = t.device_hours {
        println!("  device time: {hours:.2} device-hours");
    }
    let device_source = device.throughput.as_ref().map(|t| t.source.as_str());
    let mut described: Vec<&str> = Vec::new();
    for c in running.iter().filter(|c| c.work.is_some()) {
        if let Some(work) = &c.work {
            println!("  {}: tokens = {}", c.name, work.tokens.how);
        }
        // An instance on another backend than most is priced on its own;
        // why its memory is what it is, once per device.
        if let Some(on) = &c.device {
            let memory = if described.contains(&on.name.as_str()) {
                match on.memory_bytes {
                    u64::MAX => "memory unknown (as above)".to_string(),
                    bytes => format!("{} of memory", gib(bytes)),
                }
            } else {
                described.push(&on.name);
                memory_of(on.memory_bytes, &on.memory_source)
            };
            println!("  {}: priced on {}: {memory}", c.name, on.name);
        }
        // Priced by what runs of its shape measured, not by the device's rate.
        if let Some(source) = c.seconds_source.as_deref().filter(|s| Some(*s) != device_source) {
            println!("  {}: time from {source}", c.name);
        }
        if let Some(source) = c.peak_source.as_deref().filter(|s| s.starts_with("measured")) {
            println!("  {}: peak memory = {source}", c.name);
        }
    }
    if !t.not_estimated.is_empty() {
        println!("  not estimated:");
        for c in running.iter().filter(|c| t.not_estimated.contains(&c.name)) {
            println!("    {}: {}", c.name, c.unknown.as_deref().unwrap_or("no estimate"));
        }
    }
    for c in running.iter().filter(|c| c.over_memory) {
        let Some(work) = &c.work else { continue };
        let m = &work.memory;
        let limit = c.device.as_ref().map_or(device.memory_bytes, |on| on.memory_bytes);
        println!(
            "  ! {} does not fit: {} > {} (weights {}, gradients {}, optimizer {}, activations {})",
            c.name,
            gib(m.total_bytes()),
            gib(limit),
            gib(m.weights_bytes),
            gib(m.gradients_bytes),
            gib(m.optimizer_state_bytes),
            gib(m.activations_bytes)
        );
        for option in &work.fit_options {
            let fits = if option.peak_bytes <= limit {
                "fits"
            } else {
                "still too large"
            };
            println!("      with {}: {} ({fits})", option.change, gib(option.peak_bytes));
        }
    }
}
