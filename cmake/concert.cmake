# Declarative helpers in the spirit of absl_cc_library, so that each folder's CMakeLists.txt
# is a few lines:
#
#   concert_cc_library(NAME payment SRCS payment.cc HDRS payment.h DEPS concert::common)
#   concert_cc_binary(NAME payment-server SRCS main.cc DEPS concert::payment)
#   concert_cc_test(NAME payment_test SRCS payment_test.cc DEPS concert::payment LABELS integration)
#
# Libraries are exported as concert::<NAME>. Tests link GoogleTest's main and are registered
# with CTest; LABELS lets `ctest -L unit` or `-L integration` pick a tier.

set(CONCERT_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

function(concert_cc_library)
  cmake_parse_arguments(CC "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  add_library(concert_${CC_NAME} STATIC ${CC_SRCS} ${CC_HDRS})
  add_library(concert::${CC_NAME} ALIAS concert_${CC_NAME})
  target_include_directories(concert_${CC_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(concert_${CC_NAME} PRIVATE ${CONCERT_WARNINGS})
  target_link_libraries(concert_${CC_NAME} PUBLIC ${CC_DEPS})
endfunction()

function(concert_cc_binary)
  cmake_parse_arguments(CC "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${CC_NAME} ${CC_SRCS})
  target_compile_options(${CC_NAME} PRIVATE ${CONCERT_WARNINGS})
  target_link_libraries(${CC_NAME} PRIVATE ${CC_DEPS})
endfunction()

function(concert_cc_test)
  cmake_parse_arguments(CC "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${CC_NAME} ${CC_SRCS})
  set_target_properties(${CC_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  target_compile_options(${CC_NAME} PRIVATE ${CONCERT_WARNINGS})
  target_link_libraries(${CC_NAME} PRIVATE ${CC_DEPS} GTest::gmock GTest::gtest_main)
  add_test(NAME ${CC_NAME} COMMAND ${CC_NAME} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  if(NOT CC_TIMEOUT)
    set(CC_TIMEOUT 300)
  endif()
  if(NOT CC_LABELS)
    set(CC_LABELS unit)
  endif()
  set_tests_properties(${CC_NAME} PROPERTIES TIMEOUT ${CC_TIMEOUT} LABELS "${CC_LABELS}")
endfunction()
