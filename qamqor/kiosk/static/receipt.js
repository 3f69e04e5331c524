/* The ticket receipt prints itself once loaded into the kiosk's print frame. With chromium's
   --kiosk-printing it goes to the default printer at once; otherwise the print dialog opens
   over the ticket screen, which stays where it is. */
(function () {
  "use strict";
  if (window.parent === window) { return; }  // opened on its own: just the ticket
  window.addEventListener("load", function () {
    window.focus();
    window.print();
  });
})();
