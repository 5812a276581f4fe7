"""Hardware: GPUs, CPU, RAM and disk of the machine the dashboard (and its worker) run on, live."""

from __future__ import annotations

import streamlit as st

from storybench_core.views import hardware as hardware_view
from ui import services, widgets

st.title("Hardware")
st.caption("What this server has for running local models; refreshed every two seconds.")


@st.fragment(run_every=2.0)
def gauges() -> None:
    with widgets.guarded("reading the hardware"):
        view = hardware_view.hardware_view(services.hardware())
        st.subheader("GPU")
        if view.no_gpu_message:
            st.info(view.no_gpu_message, icon=":material/memory:")
            if view.no_gpu_detail:
                st.caption(view.no_gpu_detail)
        for gpu in view.gpus:
            with st.container(border=True):
                st.markdown(f"**{gpu.title}**")
                driver, load = st.columns(2)
                driver.metric("Driver", gpu.driver)
                load.metric("GPU load", gpu.utilization)
                st.progress(gpu.vram_fraction, text=f"VRAM {gpu.vram_label}")
        st.subheader("CPU, memory and disk")
        cores, load, disk = st.columns(3)
        cores.metric("CPU cores", view.cpu_cores)
        load.metric("CPU load", view.cpu_load)
        disk.metric("Disk free (model cache)", view.disk_free)
        st.progress(view.cpu_fraction, text=f"CPU load {view.cpu_load}")
        st.progress(view.ram_fraction, text=f"RAM {view.ram_label}")


gauges()
