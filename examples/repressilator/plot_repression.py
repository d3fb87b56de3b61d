"""The reporter's repression by TetR three ways, against TetR: the published Hill term (the
problem's nominal parameters), the network a run learned in its place, and the term the run
distilled from it (its twin.json), over the TetR levels the run's model goes through.

    python examples/repressilator/plot_repression.py RUN_DIR \
        --out docs/images/repressilator_repression.png

``RUN_DIR`` is a finished ``python train.py ...
model.spec=examples/repressilator/repressilator.yaml`` run. It prints what the network learned
(:func:`describe`). The range of TetR shaded is the
one along the trained model's trajectory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402

from ude.distill.cli import load_run  # noqa: E402
from ude.petab import load_problem  # noqa: E402
from ude.twin.symbolic import load_twin  # noqa: E402

REACTION = "v16_v_15"
REPRESSOR = "X_protein"


def published_rate(problem_yaml: str) -> tuple[sp.Expr, dict]:
    """The reaction's kinetic law in the problem's SBML and the nominal parameter values."""
    p = load_problem(problem_yaml)
    law = next(r for r in p.spec.reactions if r.name == REACTION).rate
    values = {n: q.value for n, q in p.spec.parameters.items()}
    values.update({n: r.nominal for n, r in p.parameters.items() if r.nominal is not None})
    return law, values


def distilled_rate(twin, spec) -> sp.Expr:
    """The reaction's distilled rate with the twin's values: its kinetic law where the twin
    keeps reactions, else the discovered term of the one species it makes (the twin written
    as equations), divided by the stoichiometry."""
    values = {sp.Symbol(k): q.value for k, q in twin.parameters.items()}
    found = next((r for r in twin.reactions if r.name == REACTION), None)
    if found is not None:
        return found.rate.subs(values)
    reaction = next(r for r in spec.reactions if r.name == REACTION)
    changes = {s: reaction.products.get(s, 0) - reaction.reactants.get(s, 0) for s in spec.states}
    (species, n), *more = [(s, n) for s, n in changes.items() if n]
    if more:
        raise SystemExit(f"{REACTION} changes several species: read its term off equations.md")
    return twin.discovered[species].subs(values) / n


def describe(x: np.ndarray, learned: np.ndarray, seen: np.ndarray, times: np.ndarray) -> None:
    """Print what the network learned: its production at some TetR levels, where it turns
    negative, and the Hill repression between its level at the lowest TetR along the fit and
    at the median one (``K``: TetR half-way between them; ``n``: the slope of the normalised
    curve's log-odds against log TetR at ``K``)."""
    low, mid = float(seen[seen > 0].min()), float(np.median(seen))
    print(f"TetR along the fit: {low:.3g} to {seen.max():.3g}, median {mid:.3g}")
    levels = [v for v in (0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1, 5, 30) if x[0] <= v <= x[-1]]
    at = ", ".join(f"{v:g}: {np.interp(v, x, learned):.3g}" for v in levels)
    print(f"network's production at TetR {at}")
    negative = x[learned < 0]
    if len(negative):
        print(f"network below zero from TetR {negative.min():.3g} (lowest {learned.min():.3g})")
        when = times[(seen >= negative.min()).reshape(-1, len(times)).any(axis=0)]
        print(f"TetR there at the measurement times {', '.join(f'{t:g}' for t in when)}")
    top, bottom = np.interp(low, x, learned), np.interp(mid, x, learned)
    inside = (x >= low) & (x <= mid)
    share = (learned[inside] - bottom) / (top - bottom)  # 1 at the lowest TetR, 0 at the median
    k = int(np.argmin(np.abs(share - 0.5)))
    odds = np.log(np.clip(share, 1e-6, 1 - 1e-6) / np.clip(1 - share, 1e-6, 1))
    slope = -np.gradient(odds, np.log(x[inside]))[k]
    print(
        f"as a Hill repression from {top:.3g} to {bottom:.3g} ({top / bottom:.3g}-fold): "
        f"K {x[inside][k]:.3g}, n {slope:.3g}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--twin", type=Path, help="the distilled twin (default: RUN/twin.json)")
    parser.add_argument(
        "--term",
        help="the distilled rate as text, in the repressor's name (e.g. copied from the run's "
        "equations.md, when the run stopped before writing twin.json)",
    )
    args = parser.parse_args(argv)
    cfg, model, measurements, _ = load_run(args.run, [])
    states = list(model.spec.states)
    i = states.index(REPRESSOR)
    with torch.no_grad():
        times = torch.as_tensor(measurements.times, dtype=model.initial.dtype)
        traj = model.simulate(times, torch.arange(measurements.n_conditions)).numpy()
    seen = traj[..., i].ravel()
    lo, hi = float(seen[seen > 0].min()), float(seen.max())
    x = np.geomspace(lo / 3, hi * 3, 2000)

    # the network: every state at its median along the trajectory, the repressor varied
    grid = np.tile(np.median(traj.reshape(-1, traj.shape[-1]), axis=0), (len(x), 1))
    grid[:, i] = x
    slot = next(k for k, s in enumerate(model.spec.neural) if REACTION in s.reactions)
    net = model.networks[slot]
    cols = [states.index(n) for n in model.spec.neural[slot].inputs]
    with torch.no_grad():
        flux = net.fluxes(torch.as_tensor(grid[:, cols], dtype=model.initial.dtype))
    learned = flux.numpy()[:, list(model.spec.neural[slot].reactions).index(REACTION)]

    describe(x, learned, seen, measurements.times)

    law, values = published_rate(cfg.data.problem)
    sym = sp.Symbol(REPRESSOR)
    published = sp.lambdify(sym, law.subs({sp.Symbol(k): v for k, v in values.items()}))(x)

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.axvspan(lo, hi, color="0.92", label="TetR along the fit")
    ax.plot(x, published * np.ones_like(x), "--", color="tab:green", label="published Hill term")
    ax.plot(x, learned, color="tab:orange", label="network")
    twin_path = args.twin or args.run / "twin.json"
    if args.term:
        term = sp.sympify(args.term, locals={REPRESSOR: sym})
        distilled = sp.lambdify(sym, term)(x)
        ax.plot(x, distilled * np.ones_like(x), ":", color="k", lw=2, label="distilled")
    elif twin_path.is_file():
        rate = distilled_rate(load_twin(twin_path), model.spec)
        distilled = sp.lambdify(sym, rate)(x)
        ax.plot(x, distilled * np.ones_like(x), ":", color="k", lw=2, label="distilled")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("TetR (X_protein)")
    ax.set_ylabel("GFP production (v16)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
