# cuda_static_check.cmake — the CUDA ops neither allocate nor synchronize (issue 14, engine-interface.md §c.4).
#
# ctest runs `cmake -DSRC=<source root> -P cuda_static_check.cmake`. It reads every source of the library (cuda/,
# src/, include/) and fails on any call that allocates device or pinned memory, waits for the device, or copies
# synchronously, except in the functions listed in `allowed` below:
#   cuda/status.cu   sync_finish         the check_policy::sync epilogue (waits for the op's stream)
#                    check_status_word   check_status(exec), the caller's chosen synchronization point
#                    thread_sync_words   the sync policy's pinned words (once per thread and device)
#                    ~thread_words       their release at thread exit
#   cuda/runtime.cu  device_malloc / device_free   dsv4::buffer's memory (a buffer is not an op)
#   cuda/graph.cu    pinned_malloc / pinned_free   dsv4::pinned_buffer's memory (the staging of a forward step)
# A top-level function is recognised by its definition starting in column 0 (the project's layout), which is where a
# call is attributed. The check is textual: it can be fooled by macros, and it is meant to catch the ordinary slip.
if(NOT SRC)
  message(FATAL_ERROR "usage: cmake -DSRC=<source root> -P cuda_static_check.cmake")
endif()

set(forbidden
  "cudaMalloc[A-Za-z0-9_]*[ \t]*\\("          # cudaMalloc, cudaMallocAsync, cudaMallocHost, cudaMallocManaged, ...
  "cudaHostAlloc[ \t]*\\("
  "cudaFree[A-Za-z0-9_]*[ \t]*\\("
  "cudaStreamSynchronize[ \t]*\\("
  "cudaDeviceSynchronize[ \t]*\\("
  "cudaEventSynchronize[ \t]*\\("
  "cudaMemcpy[ \t]*\\("                       # the synchronous copies (cudaMemcpyAsync is allowed)
  "cudaMemcpy2D[ \t]*\\("
  "cudaMemcpy[A-Za-z]*Symbol[ \t]*\\("
  "cudaMemset[ \t]*\\("
  "cudaMemset2D[ \t]*\\(")
# file|function|pattern prefix
set(allowed
  "cuda/status.cu|sync_finish|cudaStreamSynchronize"
  "cuda/status.cu|check_status_word|cudaStreamSynchronize"
  "cuda/status.cu|thread_sync_words|cudaHostAlloc"
  "cuda/status.cu|~thread_words|cudaFree"
  "cuda/runtime.cu|device_malloc|cudaMalloc"
  "cuda/runtime.cu|device_free|cudaFree"
  "cuda/graph.cu|pinned_malloc|cudaHostAlloc"
  "cuda/graph.cu|pinned_free|cudaFree")

file(GLOB_RECURSE files RELATIVE "${SRC}"
  "${SRC}/cuda/*.cu" "${SRC}/cuda/*.cuh" "${SRC}/src/*.cpp" "${SRC}/src/*.hpp" "${SRC}/include/*.hpp"
  "${SRC}/include/*.h")
list(LENGTH files nfiles)
if(nfiles LESS 10)
  message(FATAL_ERROR "found only ${nfiles} sources under ${SRC}: wrong SRC?")
endif()

set(violations "")
set(seen_allowed 0)
foreach(f IN LISTS files)
  file(STRINGS "${SRC}/${f}" lines)
  set(fn "")
  set(lineno 0)
  foreach(line IN LISTS lines)
    math(EXPR lineno "${lineno} + 1")
    # a definition starting in column 0: remember its name (the identifier before the first '(')
    # (each MATCHES resets CMAKE_MATCH_<n>: capture first, test the keywords after)
    if(line MATCHES "^([~A-Za-z_][A-Za-z0-9_]*)::(~?[A-Za-z_][A-Za-z0-9_]*)[ \t]*\\(")
      set(fn "${CMAKE_MATCH_2}")
    elseif(line MATCHES "^[A-Za-z_~][^;(]*[ \t*&:]([~A-Za-z_][A-Za-z0-9_]*)[ \t]*\\(")
      set(name "${CMAKE_MATCH_1}")
      if(NOT line MATCHES "^(return|if|for|while|switch|case)[ (]")
        set(fn "${name}")
      endif()
    endif()
    string(REGEX REPLACE "//.*$" "" code "${line}")  # comments may name the calls
    foreach(p IN LISTS forbidden)
      if(code MATCHES "(^|[^A-Za-z0-9_])(${p})")
        set(call "${CMAKE_MATCH_2}")
        set(ok FALSE)
        foreach(a IN LISTS allowed)
          string(REPLACE "|" ";" parts "${a}")
          list(GET parts 0 af)
          list(GET parts 1 afn)
          list(GET parts 2 apat)
          if(f STREQUAL af AND fn STREQUAL afn AND call MATCHES "^${apat}")
            set(ok TRUE)
          endif()
        endforeach()
        if(ok)
          math(EXPR seen_allowed "${seen_allowed} + 1")
        else()
          string(APPEND violations "  ${f}:${lineno} (in ${fn}): ${line}\n")
        endif()
      endif()
    endforeach()
  endforeach()
endforeach()

if(violations)
  message(FATAL_ERROR "CUDA ops must not allocate or synchronize (dsv4/exec.hpp); found outside the allowed "
                      "functions:\n${violations}")
endif()
# The allowed sites exist: if they vanish, the patterns or the function recognition broke, not the code.
if(seen_allowed LESS 5)
  message(FATAL_ERROR "cuda_static_check saw only ${seen_allowed} allowed call sites (expected >= 5): the scan is broken")
endif()
message("cuda_static_check: ${nfiles} files, no allocation or synchronization outside the ${seen_allowed} allowed sites")
