"""`virtpool pool …`: pool-wide settings and rebalancing."""

from __future__ import annotations

from typing import Annotated

import typer

from virtpool.cli import output
from virtpool.cli.common import JsonFlag, client
from virtpool.model.resources import WEIGHER_NAMES

app = typer.Typer(help="The pool as a whole: default weigher, rebalancing.", no_args_is_help=True)


@app.command("show")
def show(json: JsonFlag = False) -> None:
    """Pool-wide settings.

    Examples:

        virtpool pool show

        virtpool pool show --json
    """
    with output.errors():
        settings = client().pool_settings()
    if json:
        return output.emit_json(settings)
    output.fields(list(settings.model_dump().items()))


@app.command("set")
def set_(
    weigher: Annotated[str | None, typer.Option(
        help="how hosts are ranked when a VM create names none: " + " | ".join(WEIGHER_NAMES))
    ] = None,
    warm_copies: Annotated[int | None, typer.Option(
        "--warm-copies", help="disks each host keeps ready per memory snapshot VMs are created from "
        "(vm create --from-snapshot), so that a create only renames one (0-16; 0: copy each time)")] = None,
    warm_vms: Annotated[int | None, typer.Option(
        "--warm-vms", help="VMs of the default image and shape kept booted and paused, outside every "
        "quota (admins see them: vm list --all-projects, project _warm): `vm create NAME --start` "
        "of that shape takes one instead of booting (0-16; 0: none)")] = None,
    json: JsonFlag = False,
) -> None:
    """Change pool-wide settings (admin).

    Examples:

        virtpool pool set --weigher pack

        virtpool pool set --warm-copies 2

        virtpool pool set --warm-vms 2
    """
    if weigher is None and warm_copies is None and warm_vms is None:
        output.fail("nothing to set", hint="e.g. `virtpool pool set --weigher pack`")
    if weigher is not None and weigher not in WEIGHER_NAMES:
        output.fail(f"unknown weigher '{weigher}'", hint=f"one of: {', '.join(WEIGHER_NAMES)}")
    changes = {k: v for k, v in (("weigher", weigher), ("warm_copies", warm_copies),
                                 ("warm_vms", warm_vms)) if v is not None}
    with output.errors():
        settings = client().set_pool_settings(**changes)
    if json:
        return output.emit_json(settings)
    output.fields(list(settings.model_dump().items()))


@app.command("rebalance")
def rebalance(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, move nothing")] = False,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="acceptable spread of host utilisation, percentage points")] = 10.0,
    consolidate: Annotated[bool, typer.Option(
        "--consolidate", help="pack VMs onto fewer hosts to free the others")] = False,
    json: JsonFlag = False,
) -> None:
    """Plan live migrations that even out (or, with --consolidate, pack) the hosts; without
    --dry-run apply them — which needs live migration, not available yet.

    Examples:

        virtpool pool rebalance --dry-run

        virtpool pool rebalance --consolidate --threshold 0.2
    """
    with output.errors():
        plan = client().rebalance(threshold_pp=threshold, consolidate=consolidate,
                                  dry_run=dry_run)
    if json:
        return output.emit_json(plan)
    if plan.moves:
        output.table(["#", "VM", "FROM", "TO"],
                     [(i, m.vm, m.source, m.target) for i, m in enumerate(plan.moves, 1)],
                     title=f"{'consolidation' if consolidate else 'rebalancing'} plan")
    else:
        output.out.print("no moves needed" if plan.stopped in ("under threshold", "done")
                         else f"no moves ({plan.stopped})")
    output.out.print(
        f"spread {plan.spread_before_pp:.1f} pp → {plan.spread_after_pp:.1f} pp "
        f"(threshold {plan.threshold_pp:g} pp); {len(plan.moves)} move(s); stopped: {plan.stopped}",
        highlight=False)
    if plan.hosts_freed:
        output.out.print(f"hosts freed: {', '.join(plan.hosts_freed)}", highlight=False)
    if dry_run:
        output.out.print("dry run: nothing was moved", highlight=False)
